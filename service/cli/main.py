"""``privacy-gateway``: run the gateway, or call a running one."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from service import config as config_module
from service import data_dir
from service import demo as demo_module
from service.auth import hash_token, new_token
from service.cli import client
from service.cluster import DatabaseError
from service.config import DEFAULT_HTTP_LISTEN, DEFAULT_LISTEN, DEFAULT_RATE_LIMIT_PER_MINUTE
from service.demo import DEMO_LATENCY_MS
from service.listen import ListenError
from service.settings import FIELDS

#: What the operator must change before the gateway can start, each told in one line.
_REFUSALS = (
    config_module.ConfigError,
    data_dir.DataDirError,
    data_dir.JournalError,
    ListenError,
    DatabaseError,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except _REFUSALS as exc:
        # What the operator must change before the gateway can start: one line, no traceback.
        print(f"privacy-gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privacy-gateway",
        description="Change the privacy settings of linked WhatsApp accounts over gRPC.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gateway (with no config: a demo instance on a simulated session)",
    )
    serve.add_argument(
        "--config",
        type=Path,
        default=os.environ.get(config_module.ENV_PREFIX + "CONFIG"),
        help="TOML configuration file (env PRIVACY_GATEWAY_CONFIG); none runs the demo",
    )
    serve.add_argument("--listen", metavar="HOST:PORT", help=f"gRPC; default {DEFAULT_LISTEN}")
    serve.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        help=f"REST; default {DEFAULT_HTTP_LISTEN}; '' turns it off",
    )
    serve.add_argument(
        "--rate-limit-per-minute",
        type=int,
        metavar="N",
        help=f"per token; default {DEFAULT_RATE_LIMIT_PER_MINUTE}; 0 turns it off",
    )
    serve.add_argument("--demo-token", metavar="T", help="demo only: use this token")
    serve.add_argument(
        "--demo-latency-ms",
        type=int,
        metavar="N",
        help=f"demo only: simulated stanza latency; default {DEMO_LATENCY_MS}",
    )
    serve.set_defaults(run=_serve)

    token = commands.add_parser("token", help="make a new token and print it with its SHA-256")
    token.set_defaults(run=_token)

    get = commands.add_parser("get", help="print an instance's settings")
    get.add_argument("instance")
    _client_options(get)
    get.set_defaults(run=client.get)

    set_ = commands.add_parser("set", help="change settings, showing each field's progress")
    set_.add_argument("instance")
    for spec in FIELDS:
        set_.add_argument(
            f"--{spec.proto_name.replace('_', '-')}",
            dest=spec.proto_name,
            choices=spec.values,
            help=f"{spec.section}.{spec.proto_name}",
        )
    _client_options(set_)
    set_.set_defaults(run=client.set_)

    instances = commands.add_parser("instances", help="list instances with their state")
    _client_options(instances)
    instances.set_defaults(run=client.instances)

    pair = commands.add_parser(
        "pair", help="link a WhatsApp account: shows QR codes, or a pairing code with --phone"
    )
    pair.add_argument("instance")
    pair.add_argument(
        "--phone", metavar="NUMBER", help="international format, digits only: 5511999999999"
    )
    _client_options(pair)
    pair.set_defaults(run=client.pair)

    watch = commands.add_parser("watch", help="print an instance's settings, then each change")
    watch.add_argument("instance")
    _client_options(watch)
    watch.set_defaults(run=client.watch)

    health = commands.add_parser("health", help="exit 0 when the gateway reports SERVING")
    health.add_argument("--address", default=_env_address(), help="gateway address")
    _tls_options(health)
    health.set_defaults(run=client.health)
    return parser


def _env_address() -> str:
    return os.environ.get(config_module.ENV_PREFIX + "ADDRESS", DEFAULT_LISTEN)


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=_env_address(), help="gateway address (env PRIVACY_GATEWAY_ADDRESS)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(config_module.ENV_PREFIX + "TOKEN"),
        help="account or instance token (env PRIVACY_GATEWAY_TOKEN)",
    )
    _tls_options(parser)


def _tls_options(parser: argparse.ArgumentParser) -> None:
    """TLS to a gateway that serves it: whom to trust, and for mutual TLS what to present."""
    tls = parser.add_argument_group("TLS (any of these makes the call over TLS)")
    for flag, what in (
        ("ca-file", "trust this CA's certificates (PEM) for the gateway's"),
        ("cert-file", "mutual TLS: present this client certificate (PEM; with --key-file)"),
        ("key-file", "mutual TLS: the client certificate's private key (PEM; with --cert-file)"),
    ):
        variable = config_module.ENV_PREFIX + flag.replace("-", "_").upper()
        tls.add_argument(
            f"--{flag}",
            metavar="FILE",
            default=os.environ.get(variable),
            help=f"{what} (env {variable})",
        )


def _token(args: argparse.Namespace) -> int:
    token = new_token()
    print(f"token:        {token}")
    print(f"token_sha256: {hash_token(token)}")
    print("Put token_sha256 in the configuration; give the token to the caller.")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from service import assembly  # noqa: PLC0415 - keeps client commands light
    from service.observability import logs  # noqa: PLC0415
    from service.runtime import Endpoints, serve_until_signalled  # noqa: PLC0415

    # --config, else PRIVACY_GATEWAY_CONFIG (the option's default), names the file; without one
    # the demo stands in for it.
    demo: demo_module.Demo | None = None
    if args.config is None:
        demo = demo_module.demo(args.demo_token, args.demo_latency_ms)
    elif args.demo_token or args.demo_latency_ms is not None:
        raise config_module.ConfigError("--demo-* options apply only without --config")
    command_line = {
        "listen": args.listen,
        "http_listen": args.http_listen,
        "rate_limit_per_minute": args.rate_limit_per_minute,
    }
    file = Path(args.config) if demo is None else demo.contents
    cfg = config_module.resolve(command_line, os.environ, file)
    tls = config_module.server_tls(cfg)
    logs.configure(cfg.log_level, cfg.log_format, sys.stderr)

    def ready(endpoints: Endpoints) -> None:
        host = cfg.listen.rsplit(":", 1)[0]
        kind = "" if tls is None else " (mutual TLS)" if tls.mutual else " (TLS)"
        print(f"privacy-gateway: gRPC listening on {host}:{endpoints.grpc_port}{kind}", flush=True)
        if endpoints.http_port is not None:
            http_host = cfg.http_listen.rsplit(":", 1)[0]
            scheme = "http" if tls is None else "https"
            print(
                f"privacy-gateway: REST listening on "
                f"{scheme}://{http_host}:{endpoints.http_port}{kind}",
                flush=True,
            )
        if endpoints.metrics_port is not None:
            metrics_host = cfg.metrics_listen.rsplit(":", 1)[0]
            print(
                f"privacy-gateway: metrics on http://{metrics_host}:{endpoints.metrics_port}"
                "/metrics",
                flush=True,
            )
        cluster = gateway.cluster
        if cluster is not None and cluster.leases is not None and cluster.me is not None:
            print(
                f"privacy-gateway: replica {cluster.replica_id} at {cluster.me.grpc_address}, "
                f"serving {len(cluster.leases.held)} of {len(cfg.instances)} instance(s)",
                flush=True,
            )
        if demo is not None:
            trust = "" if tls is None else " --ca-file CA.pem"
            if tls is not None and tls.mutual:
                trust += " --cert-file CLIENT.pem --key-file CLIENT-KEY.pem"
            print(
                f"demo instance 'demo' on a simulated WhatsApp session "
                f"({cfg.instances[0].latency_ms} ms per stanza)\n"
                f"demo token: {demo.token}\n"
                f"try:  privacy-gateway set demo --last-seen none --read-receipts none "
                f"--address {host}:{endpoints.grpc_port} --token {demo.token}{trust}",
                flush=True,
            )

    # Taken before anything opens the data_dir or binds a port: a second gateway on this data_dir
    # stops here, with nothing started; the lock goes when the gateway has stopped.
    with data_dir.locked(cfg.data_dir):
        gateway = assembly.build_gateway(cfg)
        serving = serve_until_signalled(
            gateway,
            cfg.listen,
            cfg.http_listen or None,
            cfg.shutdown_grace_seconds,
            ready,
            tls=tls,
            metrics_address=cfg.metrics_listen or None,
        )
        asyncio.run(serving)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
