#!/usr/bin/env python3
"""Reference "aws s3 cp"-class client for benchmarks against the local S3 server.

    python3 hack/s3/bench_client.py put FILE s3://bucket/key
    python3 hack/s3/bench_client.py get s3://bucket/key FILE

Uses boto3's managed transfers (``upload_file`` / ``download_file``) with the
default ``TransferConfig`` (8 MiB multipart threshold and chunks, 10 threads) —
the same machinery as ``aws s3 cp``. Connection settings come from the
environment, as written by ``hack/s3/up`` into ``hack/s3/.run/env``:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and the endpoint from
KOMPRESS_S3_ENDPOINT (or AWS_ENDPOINT_URL). ``--env FILE`` reads such a file.

Prints one JSON line on stdout, e.g.
    {"op": "put", "bytes": 52428800, "seconds": 0.41, "mib_per_s": 121.9, ...}
``seconds`` covers only the transfer (client creation is done before timing).
"""

import argparse
import json
import os
import sys
import time


def load_env_file(path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            k, v = line.split("=", 1)
            os.environ[k.removeprefix("export ").strip()] = v.strip().strip('"').strip("'")


def parse_s3_url(url):
    if not url.startswith("s3://"):
        raise SystemExit(f"bench_client: expected s3://bucket/key, got {url!r}")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket or not key:
        raise SystemExit(f"bench_client: expected s3://bucket/key, got {url!r}")
    return bucket, key


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", help="env file written by hack/s3/up (default: use the process env)")
    ap.add_argument("op", choices=["put", "get"])
    ap.add_argument("src")
    ap.add_argument("dst")
    args = ap.parse_args()

    if args.env:
        load_env_file(args.env)

    try:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
    except ImportError:
        raise SystemExit("bench_client: python module boto3 is missing: pip install boto3")

    endpoint = os.environ.get("KOMPRESS_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        raise SystemExit("bench_client: no KOMPRESS_S3_ENDPOINT / AWS_ENDPOINT_URL (source hack/s3/.run/env or pass --env)")

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    cfg = TransferConfig()  # defaults, like `aws s3 cp`

    if args.op == "put":
        path = args.src
        bucket, key = parse_s3_url(args.dst)
        size = os.path.getsize(path)
        t0 = time.perf_counter()
        s3.upload_file(path, bucket, key, Config=cfg)
        dt = time.perf_counter() - t0
    else:
        bucket, key = parse_s3_url(args.src)
        path = args.dst
        t0 = time.perf_counter()
        s3.download_file(bucket, key, path, Config=cfg)
        dt = time.perf_counter() - t0
        size = os.path.getsize(path)

    mib = size / (1024 * 1024)
    print(json.dumps({
        "op": args.op,
        "client": "boto3",
        "boto3": boto3.__version__,
        "endpoint": endpoint,
        "bucket": bucket,
        "key": key,
        "bytes": size,
        "seconds": round(dt, 6),
        "mib_per_s": round(mib / dt, 3) if dt > 0 else None,
        "multipart_threshold": cfg.multipart_threshold,
        "multipart_chunksize": cfg.multipart_chunksize,
        "max_concurrency": cfg.max_request_concurrency,
    }))


if __name__ == "__main__":
    sys.exit(main())
