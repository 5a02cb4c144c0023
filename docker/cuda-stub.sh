# Sourced by the builder's scripts: make `import llama_cpp` work in a CUDA build without a GPU.
# A CUDA build of libggml-cuda.so needs libcuda.so.1, which is the driver's and is mounted into a
# container only when it runs with --gpus. The CUDA devel image ships a stub of it (every call
# answers "no device"), so llama.cpp loads, finds no GPU and quantizes on the CPU.
# The stub lives in a temp dir on LD_LIBRARY_PATH for this process only, never in the image.
use_cuda_stub_if_needed() {
    local stub=${CUDA_STUB:-/usr/local/cuda/lib64/stubs/libcuda.so}
    if [ "${BACKEND:-cuda}" != cuda ] || [ ! -e "$stub" ] || ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
        return 0   # CPU build, no stub to offer, or a real driver is present.
    fi
    local dir
    dir=$(mktemp -d)
    ln -s "$stub" "$dir/libcuda.so.1"
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}
