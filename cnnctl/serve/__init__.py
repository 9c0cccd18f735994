"""`cnnctl serve`: an HTTP inference service over an exported model. Imports no torch.

Starlette (ASGI) routes on uvicorn. Each image is decoded and normalised exactly as `cnnctl
predict` does it (`preprocess.load_image` with the `Preprocess` stored in the model), in a thread
pool off the event loop; a single batcher task gathers the images of concurrent requests into one
onnxruntime call of up to `max_batch` images, waiting at most `max_wait_ms` for a batch to fill
(dynamic batching, as Triton and TorchServe do), so throughput grows with concurrency while a lone
request waits only that long.

Routes: cnnctl's own `POST /predict` (image files), `GET /health`, `GET /metadata`, `GET /` (a page
to try the model), `GET /metrics` (Prometheus), and the Open Inference Protocol under `/v2`
(`oip.py`: what Triton, KServe and Seldon speak, tensors in and out). Every error is a 4xx/5xx with
a one-line JSON body `{"error": "..."}`; bad input never stops the service.

Modules: `config` (settings, HTTPError, auth rule), `state` (the model, readiness, admission),
`batcher`, `body` (request bodies), `handlers`, `oip` (the protocol's codec), `metrics`, `app`
(routes, the front door: auth, metrics, logs; `run`).
"""

from cnnctl.serve.app import app_from_env, create_app, run
from cnnctl.serve.config import ServeConfig

__all__ = ["ServeConfig", "app_from_env", "create_app", "run"]
