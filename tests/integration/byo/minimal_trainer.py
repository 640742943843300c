"""A bring-your-own trainer in its smallest form: FBL_* env in, the contract's files out, manifest last.

It imports nothing of this project, as a TensorFlow or PyTorch image would not.
"""

import hashlib
import json
import os
import re

import boto3
from botocore.config import Config


def main() -> None:
    location = re.match(r"^s3://([^/]+)/(.*)$", os.environ["FBL_ARTIFACT_URI"])
    if location is None:
        raise SystemExit(f"FBL_ARTIFACT_URI is not an s3:// URI: {os.environ['FBL_ARTIFACT_URI']}")
    bucket, prefix = location.groups()
    version = os.environ["FBL_VERSION"]
    s3 = boto3.client(
        "s3", config=Config(request_checksum_calculation="when_required", s3={"addressing_style": "path"})
    )
    files = {
        "model.joblib": b"weights of some framework's model",
        "metrics.json": json.dumps(
            {"schemaVersion": 1, "candidate": {"accuracy": 0.9}, "current": None}
        ).encode(),
    }
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=data)
    manifest = {
        "schemaVersion": 1,
        "version": version,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in files.items()
        },
    }
    s3.put_object(Bucket=bucket, Key=prefix + "manifest.json", Body=json.dumps(manifest).encode())


if __name__ == "__main__":
    main()
