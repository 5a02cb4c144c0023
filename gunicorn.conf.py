"""Gunicorn settings for the evaluation server: `gunicorn -c gunicorn.conf.py wsgi:app`.

One worker process owns the model (one copy in GPU memory); its threads accept many
concurrent HTTP requests and hand them to the engine's scheduler, which batches them.
"""
# A command-line -b overrides this; the Docker image binds port 80.
bind = ["0.0.0.0:8080"]
# One process: the model is loaded once per machine, and only one process can own a GPU context.
workers = 1
# gthread: each request gets a thread that waits on the engine; HELM keeps 4+ in flight, tests 16.
worker_class = "gthread"
threads = 64
# The gthread worker's heartbeat runs in its main loop, not in request threads, so a long
# generation is never killed by this timeout; it only catches a worker whose loop is stuck.
timeout = 120
# Requests in flight get this long to finish on SIGTERM before the worker is killed (seconds).
graceful_timeout = 300
keepalive = 75
# The app loads the model in each worker after fork: CUDA contexts do not survive fork().
preload_app = False
# Pending connections beyond the threads wait in the kernel's accept queue.
backlog = 2048
accesslog = "-"
errorlog = "-"
loglevel = "info"
