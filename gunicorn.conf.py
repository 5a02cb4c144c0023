"""Gunicorn settings for the evaluation server: `gunicorn -c gunicorn.conf.py wsgi:app`.

One worker process owns the model (one copy in GPU memory); its threads accept many
concurrent HTTP requests and hand them to the engine's scheduler, which batches them.
In production (scripts/serve.sh, the Docker image) `python -m app.serve` runs this behind nginx,
bound to a unix socket; see app/serve.py.
"""
from app.config import Settings

# The same settings the app reads (MAX_QUEUED, N_PARALLEL, DRAIN_TIMEOUT...); bad values stop here.
_settings = Settings.from_env()

# A command-line -b overrides this; app.serve binds a unix socket behind nginx.
bind = ["0.0.0.0:8080"]
# One process: the model is loaded once per machine, and only one process can own a GPU context.
workers = 1
# gthread: each request gets a thread that waits on the engine. Enough threads for every request
# that may run or queue (N_PARALLEL + MAX_QUEUED) plus 16 for /health, /metrics and the tokenizer,
# so overload is answered by the queue limit (503 + Retry-After), never by a lack of threads.
worker_class = "gthread"
threads = _settings.http_threads
# The gthread worker's heartbeat runs in its main loop, not in request threads, so a long
# generation is never killed by this timeout; it only catches a worker whose loop is stuck.
timeout = 120
# On SIGTERM, requests in flight get DRAIN_TIMEOUT seconds to finish, then the worker is killed.
graceful_timeout = _settings.drain_timeout
keepalive = 75
# The app loads the model in each worker after fork: CUDA contexts do not survive fork().
preload_app = False
# Pending connections beyond the threads wait in the kernel's accept queue.
backlog = 2048
# The app logs one line per request itself (app/access_log.py, with token counts and timings).
accesslog = None
errorlog = "-"
loglevel = "info"
# gunicorn 27's control socket (gunicornc) is on by default: anyone with access could add workers,
# each loading another copy of the model, and a second server on the host would take it over.
control_socket_disable = True
