"""The README's first example ("Using it"), as a file: tests/python/test_readme_examples.py runs
it and checks that the README shows it as it is."""
import asyncio

import torch
import torchvision

import gpulanes as gl

torch.manual_seed(0)
model = torchvision.models.mobilenet_v3_small(weights=None).eval()
x = torch.randn(3, 96, 96)                # a request is one sample: no batch dimension

rt = gl.Runtime(device="auto")            # CUDA when usable, else CPU
rt.register("mobilenet", torch.jit.trace(model, torch.randn(1, 3, 96, 96)), slo_ms=200,
            example_inputs=(torch.randn(1, 3, 96, 96),), max_batch_size=8)
with rt:                                  # start(): load + warm up on every lane; exit drains
    fut = rt.submit("mobilenet", x, deadline_ms=100)   # a concurrent.futures.Future
    y = fut.result()                                    # 1000 logits
    y = rt.infer("mobilenet", x)                        # deadline = the model's SLO
    y = asyncio.run(rt.infer_async("mobilenet", x))     # in your coroutines: await it
    fut = rt.submit("mobilenet", x, priority=1)         # best effort: gives way under overload
    fut.result()
    print(rt.stats()["mobilenet"]["met"], "requests met their deadline")
    print(rt.profile("mobilenet")[0])   # latency per batch size, measured at start()
# Also: rt.stats(per="lane"), rt.metrics_text() (Prometheus), rt.save_profiles("p.json"),
# gl.Runtime(..., trace=True) and rt.trace_frame() (a pandas DataFrame of every request).
