"""A real Triton server (PyTriton's bundled tritonserver) serving the models of
benchmarks/serve.py, for perf_analyzer to drive with the same command as `gpulanes serve`.

Run by serve.py under a virtual environment of its own (PyTriton pins numpy < 2, and its Python
backend stub links the system's libpython, so that environment is made from the system's Python
of the same version). The models are the same TorchScript files gpulanes serves, run with torch
in PyTriton's inference callables behind Triton's dynamic batcher (max batch size as in the
gpulanes config, no queue delay: Triton's default).

    python pytriton_server.py DIR HTTP_PORT GRPC_PORT METRICS_PORT
prints "pytriton ready" on stdout when both endpoints serve, and stops on SIGTERM.
"""

import signal
import sys
import threading
from pathlib import Path

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

MODELS = {"tiny": ((4,), 32), "cnn": ((3, 224, 224), 16)}  # name: (sample shape, max batch)


def callable_for(module: torch.jit.ScriptModule):
    @batch
    def infer(INPUT__0: np.ndarray):  # noqa: N803 (Triton's tensor name)
        with torch.inference_mode():
            return {"OUTPUT__0": module(torch.from_numpy(INPUT__0)).numpy()}
    return infer


def main() -> None:
    root, http, grpc, metrics = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    config = TritonConfig(http_port=http, grpc_port=grpc, metrics_port=metrics)
    # perf_analyzer reads the statistics endpoints, which PyTriton guards by default; the
    # endpoints that change the server stay behind PyTriton's own token.
    security = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository",
                                                          "trace", "logging"])
    with Triton(config=config, security_config=security) as triton:
        for name, (shape, max_batch) in MODELS.items():
            module = torch.jit.load(str(root / f"{name}.pt")).eval()
            with torch.inference_mode():  # what gpulanes' warm-up does before serving
                for _ in range(3):
                    module(torch.zeros((max_batch, *shape)))
            out_shape = tuple(module(torch.zeros((1, *shape))).shape[1:])
            triton.bind(model_name=name, infer_func=callable_for(module),
                        inputs=[Tensor(name="INPUT__0", dtype=np.float32, shape=shape)],
                        outputs=[Tensor(name="OUTPUT__0", dtype=np.float32, shape=out_shape)],
                        config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher()))
        triton.run()
        print("pytriton ready", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
