"""Ring 1 of the build pipeline: quant names, specs, sources, every step's --help."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from build_engine import quantize, specs
from build_engine.errors import BuildError

pytestmark = pytest.mark.build
STEPS = ["build_engine.build", "build_engine.fetch", "build_engine.vendor", "build_engine.convert",
         "build_engine.quantize", "build_engine.imatrix", "build_engine.describe", "build_engine.evaluate",
         "build_engine.default_model"]


@pytest.mark.parametrize("module", STEPS)
def test_every_step_has_help(module: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_file_types_cover_the_common_levels() -> None:
    types = quantize.file_types()
    for name in ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_XS", "F16", "BF16", "F32"):
        assert name in types, name
    assert len(set(types.values())) == len(types), "two names for one llama_ftype"


def test_quant_list_is_case_insensitive_ordered_and_deduplicated() -> None:
    assert quantize.parse_quant_list("q8_0, Q4_K_M,q8_0") == ["Q8_0", "Q4_K_M"]


def test_unknown_quant_is_an_error_listing_the_valid_ones() -> None:
    with pytest.raises(BuildError) as err:
        quantize.parse_quant_list("Q4_K_M,Q9_X")
    msg = str(err.value)
    assert "Q9_X" in msg and "Q4_K_M" in msg and "IQ4_XS" in msg and "BF16" in msg


def test_unknown_quant_on_the_command_line_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from build_engine.build import main

    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path), "--quant", "Q3_Z", "--out", str(tmp_path / "out")])
    assert "unknown quantization type Q3_Z" in str(exit_.value.code)
    assert not (tmp_path / "out").exists(), "nothing is written before the arguments are valid"


@pytest.mark.parametrize("name", specs.list_specs())
def test_specs_are_complete_and_pinned(name: str) -> None:
    spec = specs.load_spec(name)
    assert spec["name"] == name
    assert specs.COMMIT.match(spec["revision"]), spec["revision"]
    assert specs.HUB_ID.match(spec["hub_id"]), spec["hub_id"]
    assert spec["recommended_quant"] in quantize.file_types()
    assert spec["n_ctx"] > 0 and spec["license"] and spec["description"]


def test_spec_names_include_the_contestant_starting_points() -> None:
    assert {"mistral-7b", "smollm2-135m-instruct"} <= set(specs.list_specs())
    assert len(specs.list_specs()) >= 4


def test_resolve_source_by_spec_name_hub_id_and_folder(tmp_path: Path) -> None:
    by_name = specs.resolve_source("mistral-7b")
    assert by_name.hub_id == "mistralai/Mistral-7B-v0.1" and by_name.revision == by_name.spec["revision"]
    assert specs.resolve_source("mistral-7b", revision="main").revision == "main"
    by_id = specs.resolve_source("acme/My-Model_v2")
    assert (by_id.hub_id, by_id.revision, by_id.name) == ("acme/My-Model_v2", "main", "my-model_v2")
    local = specs.resolve_source(str(tmp_path))
    assert local.local_dir == tmp_path.resolve() and local.hub_id is None


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "ckpt"
    with pytest.raises(BuildError, match=f"checkpoint folder {missing} does not exist"):
        specs.resolve_source(str(missing))


def test_a_file_is_not_a_checkpoint_folder(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(BuildError, match="is a file"):
        specs.resolve_source(str(tmp_path / "model.safetensors"))


def test_a_converter_tree_with_parts_missing_is_named(tmp_path: Path) -> None:
    from build_engine import vendor

    tree = tmp_path / "9.9.9" / "llama.cpp"
    tree.mkdir(parents=True)
    (tree / "convert_hf_to_gguf.py").write_text("")
    (tmp_path / "9.9.9" / "COMPLETE").write_text("0" * 64)
    with pytest.raises(BuildError, match=r"lacks conversion/, gguf-py/, LICENSE; delete .* to extract the sdist again"):
        vendor.ensure_converter(cache=tmp_path, version="9.9.9")


def test_the_llama_cpp_commit_comes_from_the_changelog() -> None:
    from build_engine.vendor import _changelog_commit

    changelog = "## [Unreleased]\n\n## [0.3.36]\n\n- feat: update llama.cpp to ggml-org/llama.cpp@0c1e57098\n\n" \
                "## [0.3.35]\n\n- feat: update llama.cpp to ggml-org/llama.cpp@4df29be4f\n"
    assert _changelog_commit(changelog, "0.3.36") == "0c1e57098"
    assert _changelog_commit(changelog, "0.3.35") == "4df29be4f"  # the last section too
    assert _changelog_commit(changelog, "0.3.34") is None
