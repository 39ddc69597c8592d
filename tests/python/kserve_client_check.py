"""Runs in KServe's own environment (~/.cache/gpulanes/kserve-venv, made by scripts/bootstrap.sh:
the kserve package pins pandas < 3 and psutil < 6, which this project's environment does not
take). Drives a gpulanes server with KServe's Python client, REST and gRPC, as KServe's users
would, and prints what it saw as one JSON object for tests/python/test_kserve_client.py.

    python kserve_client_check.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb


def request(model: str, binary: bool) -> InferRequest:
    x = InferInput("INPUT__0", [2, 4], "FP32")
    x.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4), binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[x], request_id="kserve-1")


async def main(http: str, grpc: str, model: str) -> dict:
    out = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    base = f"http://{http}"
    out["rest_live"] = await rest.is_server_live(base)
    out["rest_ready"] = await rest.is_server_ready(base)
    out["rest_model_ready"] = await rest.is_model_ready(base, model)
    for binary in (False, True):
        r = await rest.infer(base, request(model, binary), model_name=model)
        out[f"rest_infer_{'binary' if binary else 'json'}"] = {
            "id": r.id, "output": r.outputs[0].as_numpy().tolist()}
    try:
        await rest.infer(base, request("no-such-model", False), model_name="no-such-model")
        out["rest_unknown"] = "answered"
    except Exception as e:  # noqa: BLE001 - what the client raises is what is checked
        out["rest_unknown"] = f"{type(e).__name__}: {e}"
    await rest.close()

    client = InferenceGRPCClient(grpc, timeout=60)
    out["grpc_live"] = await client.is_server_live()
    out["grpc_ready"] = await client.is_server_ready()
    out["grpc_model_ready"] = await client.is_model_ready(model)
    r = await client.infer(request(model, True))
    out["grpc_infer"] = {"id": r.id, "output": r.outputs[0].as_numpy().tolist()}
    meta = await client._client_stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
    out["grpc_metadata"] = {"name": meta.name,
                            "inputs": [[t.name, t.datatype, list(t.shape)] for t in meta.inputs]}
    server = await client._client_stub.ServerMetadata(pb.ServerMetadataRequest())
    out["grpc_server_metadata"] = {"name": server.name, "extensions": list(server.extensions)}
    await client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
