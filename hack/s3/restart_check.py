#!/usr/bin/env python3
"""Check that the local S3 server survives being killed mid-upload (what tests do).

    python3 hack/s3/restart_check.py      # needs a server from hack/s3/up

1. puts a small object, 2. starts a 200 MiB multipart upload_file in a thread,
3. `hack/s3/stop --kill` (SIGKILL) while it runs, 4. `hack/s3/start`, then checks:
same endpoint/port, the small object survived, the interrupted object does not
exist, its multipart upload is still pending (a client must abort it), and a new
upload works. Then a graceful `stop` / `start`. Exits non-zero on failure.
"""

import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


def run(*cmd):
    t0 = time.monotonic()
    r = subprocess.run([os.path.join(HERE, cmd[0]), *cmd[1:]], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {r.returncode}: {r.stderr[-500:]}")
    return r.stdout, time.monotonic() - t0


def main():
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    env_path = run("up")[0].strip().splitlines()[-1]
    env = read_env(env_path)
    os.environ.update(env)
    bucket = env["KOMPRESS_S3_BUCKETS"].split(",")[0]
    s3 = boto3.client(
        "s3",
        endpoint_url=env["KOMPRESS_S3_ENDPOINT"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      connect_timeout=2, read_timeout=10),
    )
    prefix = f"restart-check/{os.getpid()}/"
    s3.put_object(Bucket=bucket, Key=prefix + "before.txt", Body=b"before-kill")

    big = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kompress-s3-restart-{os.getpid()}.bin")
    with open(big, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1024 * 1024))
    errors = []

    def upload():
        try:
            s3.upload_file(big, bucket, prefix + "big.bin", Config=TransferConfig(max_concurrency=2))
        except Exception as e:  # expected: connection refused/reset
            errors.append(type(e).__name__)

    try:
        t = threading.Thread(target=upload)
        t.start()
        time.sleep(0.5)
        _, dt = run("stop", "--kill")
        print(f"ok - stop --kill during upload ({dt:.2f}s)")
        t.join()
        assert errors, "upload finished before the kill; nothing was tested"
        print(f"ok - interrupted upload failed on the client: {errors[0]}")

        _, dt = run("start")
        env2 = read_env(env_path)
        assert env2["KOMPRESS_S3_ENDPOINT"] == env["KOMPRESS_S3_ENDPOINT"], (env2, env)
        print(f"ok - start ({dt:.2f}s), same endpoint {env2['KOMPRESS_S3_ENDPOINT']}")

        body = s3.get_object(Bucket=bucket, Key=prefix + "before.txt")["Body"].read()
        assert body == b"before-kill", body
        print("ok - object written before the kill survived")
        try:
            s3.head_object(Bucket=bucket, Key=prefix + "big.bin")
            raise AssertionError("interrupted object exists")
        except s3.exceptions.ClientError as e:
            assert e.response["Error"]["Code"] in ("404", "NoSuchKey"), e.response
        print("ok - interrupted object does not exist")
        pending = [u for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]
        print(f"ok - {len(pending)} multipart upload(s) left pending by the kill (aborting them)")
        for u in pending:
            s3.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])

        s3.upload_file(big, bucket, prefix + "big.bin")
        size = s3.head_object(Bucket=bucket, Key=prefix + "big.bin")["ContentLength"]
        assert size == os.path.getsize(big), size
        print("ok - upload after restart")

        _, dt = run("stop")
        print(f"ok - graceful stop ({dt:.2f}s; ~10s while clients keep idle connections open)")
        run("start")
        size = s3.head_object(Bucket=bucket, Key=prefix + "big.bin")["ContentLength"]
        assert size == os.path.getsize(big), size
        print("ok - data kept across graceful stop/start")
    finally:
        os.remove(big)
        try:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": prefix + k} for k in ("before.txt", "big.bin")]})
        except Exception:
            pass
    print("restart_check: passed")


if __name__ == "__main__":
    main()
