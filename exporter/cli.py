"""The `pageheat` command. Errors are caught here and become one line and an exit code:
2 for bad configuration or arguments, 1 for anything the machine or kernel refuses.

Options follow the Prometheus exporters' conventions (--web.listen-address, --log.level, ...);
the older spellings stay as aliases. --log.level and --log.format work before or after the
subcommand."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pageheat import __version__, config, logs
from pageheat.commands import doctor
from pageheat.config import ConfigError, Targets, parse_duration
from pageheat.kernel import capabilities, cgroups, procfs
from pageheat.serve import targets
from pageheat.serve.launch import not_runnable
from pageheat.sources import NAMES, MglruAging, TlbFlush, open_source
from pageheat.sources.base import Source, SourceError
from pydantic import ValidationError

if TYPE_CHECKING:
    from pageheat.serve.daemon import Daemon
    from pageheat.serve.launch import Launched


class UsageError(Exception):
    """Bad input from the user: exit 2."""


def _range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        start, end = int(lo, 16), int(hi, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START-END in hex, got {text!r}") from None
    if not sep or end <= start:
        raise argparse.ArgumentTypeError(f"expected START-END with START < END, got {text!r}")
    if end > 1 << 64:
        raise argparse.ArgumentTypeError(f"expected addresses below 2^64, got {text!r}")
    return start, end


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return int(text)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _common() -> argparse.ArgumentParser:
    """Options every subcommand accepts too. Their default is SUPPRESS, so that a subcommand
    that does not see them keeps what was given before it (the main parser's defaults)."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--log.level", "--log-level", dest="log_level", choices=logs.LEVELS,
                   default=argparse.SUPPRESS, help="log level (default info)")
    c.add_argument("--log.format", dest="log_format", choices=logs.FORMATS,
                   default=argparse.SUPPRESS, help="log line format (default logfmt)")
    return c


def _listen(text: str) -> str:
    try:
        config.parse_listen(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the whole usage first): bad input is
    one line and exit 2, as everywhere else; --help has the usage. Its subcommands' parsers
    are of this class too (add_subparsers uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pageheat: {' '.join(message.split())} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    common = _common()
    p = _Parser(prog="pageheat", description=__doc__, parents=[common])
    p.set_defaults(log_level="info", log_format="logfmt")
    p.add_argument("--version", action="version", version=f"pageheat {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    s = add("serve", help="run the exporter")
    s.add_argument("--config.file", "--config", dest="config", type=Path, metavar="FILE",
                   help="YAML configuration file")
    s.add_argument("--config.check", dest="config_check", action="store_true",
                   help="validate the configuration (file, environment, flags, web config), print "
                        "the effective settings as YAML and exit")
    s.add_argument("--pid", type=_pid, action="append",
                   help="follow this process (repeatable); only these: the configured targets "
                        "selectors are replaced")
    s.add_argument("--web.listen-address", "--listen", dest="listen", action="append", metavar="HOST:PORT",
                   help=f"listen here (repeatable; default 0.0.0.0:{config.DEFAULT_PORT})")
    s.add_argument("--web.telemetry-path", dest="telemetry_path", metavar="PATH",
                   help="path of the metrics (default /metrics)")
    s.add_argument("--web.config.file", "--web-config", dest="web_config", type=Path, metavar="FILE",
                   help="TLS / basic auth web-config file (exporter-toolkit format)")
    s.add_argument("--aging", help="aging interval, e.g. 1s or 500ms (minimum 100ms)")
    s.add_argument("--source", choices=("auto", *NAMES))
    s.add_argument("--cpu-budget", help="fraction of one CPU for harvest + aging")
    s.add_argument("--tlb-flush", choices=[m.value for m in TlbFlush],
                   help="TLB flush after each aging (docs/ACCURACY.md; default auto)")
    s.add_argument("--mglru-aging", choices=[m.value for m in MglruAging],
                   help="mglru sources: request agings or only watch the kernel's (default active)")
    s.add_argument("--cgroup", choices=("inherit", "own"),
                   help="run the command after -- in pageheat's memory cgroup (inherit, the default) "
                        "or in a new one of its own (own)")
    s.add_argument("cmd", nargs=argparse.REMAINDER,
                   help="-- CMD ARGS...: launch CMD and follow it too; serve keeps running after it exits")

    d = add("doctor", help="say which sources can run on this kernel, and why not")
    d.add_argument("--json", action="store_true")

    n = add("snapshot", help="scan one process a few times and print JSON")
    n.add_argument("--pid", type=_pid, required=True)
    n.add_argument("--aging", type=_duration, default=0.5)
    n.add_argument("--scans", type=int, default=3)
    n.add_argument("--range", type=_range, help="START-END (hex): limit --pages to this range")
    n.add_argument("--pages", action="store_true", help="per-page detail (requires --range)")
    n.add_argument("--source", choices=("auto", *NAMES), help="default: the setting (auto)")
    n.add_argument("--json", action="store_true", help="print JSON (the only format)")

    w = add("workload", help="run a ground-truth workload (hot, warm, cold pages)")
    from pageheat.commands.workload import add_arguments

    add_arguments(w)

    t = add("top", help="live terminal heatmap of one process")
    t.add_argument("--pid", type=_pid, help="follow this process")
    t.add_argument("--connect", metavar="URL",
                   help="follow a running `pageheat serve` (http[s]://HOST:PORT; redirects are not followed)")
    t.add_argument("--connect-user", metavar="USER",
                   help="basic auth user for --connect (or USER:PASSWORD@ in the URL)")
    t.add_argument("--connect-password-file", metavar="FILE",
                   help="basic auth password for --connect: first line of FILE "
                        "(or the environment variable PAGEHEAT_CONNECT_PASSWORD)")
    t.add_argument("--ca-file", metavar="FILE", help="CA certificate(s) to verify an https --connect server")
    t.add_argument("--source", choices=("auto", *NAMES), help="default: the setting (auto)")
    t.add_argument("--aging", type=_duration, default=0.5, help="aging interval (default 500ms)")
    t.add_argument("--aggregate", type=int, default=3, metavar="N", help="agings per column (default 3)")
    t.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...: launch and follow")

    r = add("render", help="draw one process's heatmap from Prometheus (PNG, SVG, terminal)")
    from pageheat.commands.render import add_arguments as render_arguments

    render_arguments(r)

    m = add("demo", help="serve metrics for a built-in workload and print its heat")
    m.add_argument("--seconds", type=_duration, default=20.0, help="how long (default 20s)")
    m.add_argument("--listen", type=_listen, default=f"127.0.0.1:{config.DEFAULT_PORT}")

    c = add("completion", help="print a shell completion script (bash, zsh or tcsh)")
    c.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    return p


# Commands whose result is their standard output: with it closed (`snapshot >&-`), Python's
# sys.stdout is None and print() would drop everything without a word.
PRINTS_RESULT = ("snapshot", "doctor", "render", "demo", "completion")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if sys.stdout is None and args.command in PRINTS_RESULT:
        if sys.stderr is not None:
            print(f"pageheat: {args.command}: standard output is closed", file=sys.stderr)
        return 2
    try:
        return _dispatch(args)
    except (ValidationError, UsageError, ConfigError) as e:
        print(f"pageheat: {_one_line(e)}", file=sys.stderr)
        return 2
    except (SourceError, cgroups.CgroupError, OSError) as e:
        print(f"pageheat: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _one_line(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return config.describe(e)
    return " ".join(str(e).split())


def _dispatch(args: argparse.Namespace) -> int:
    follows = args.command in ("snapshot", "demo") or (args.command == "top" and not args.connect) \
        or (args.command == "serve" and not args.config_check)  # checking a config follows nothing
    if follows:
        why = procfs.pid_namespace_problem()
        if why:
            raise SourceError(why)
    if args.command == "serve":
        return _serve(args)
    if args.command == "doctor":
        cfg = config.from_env()  # the sources' settings, as serve would use them
        return doctor.run(as_json=args.json, options=cfg.source_options())
    if args.command == "snapshot":
        return _snapshot(args)
    if args.command == "workload":
        from pageheat.commands.workload import run, spec_from_args

        run(spec_from_args(args), args.truth)
        return 0
    if args.command == "top":
        return _top(args)
    if args.command == "render":
        from pageheat.commands.render import run as render

        return render(args, no_color=config.no_color())
    if args.command == "demo":
        from pageheat.commands.demo import run as demo

        return demo(args.seconds, args.listen)
    if args.command == "completion":
        import shtab

        print(shtab.complete(parser(), shell=args.shell), end="")
        return 0
    raise AssertionError(args.command)


def _serve(args: argparse.Namespace) -> int:
    cmd = _command(args.cmd)
    if args.cgroup == "own" and not cmd:
        raise UsageError("--cgroup own needs a command to launch: serve --cgroup own -- CMD ARGS...")
    if cmd and (why := not_runnable(cmd)):
        raise UsageError(why)
    cfg = _serve_config(args)
    if not args.config_check and (cgroupns := procfs.cgroup_namespace_problem()):
        if cfg.targets.cgroups:  # nothing could ever be selected by them
            raise SourceError(f"targets.cgroups: {cgroupns}")
        logging.getLogger("pageheat").warning("%s", cgroupns)
    if cfg.targets.pids:  # each must name a process that can be followed, or serve does not start
        pids = list(dict.fromkeys(_process_of(p) for p in cfg.targets.pids))
        for pid in pids:
            _check_access(pid)
        cfg = cfg.model_copy(update={"targets": cfg.targets.model_copy(update={"pids": pids})})
    from pageheat.serve.webconfig import WebConfig

    try:
        web = WebConfig.load(cfg.web_config_file)
    except ValidationError as e:
        raise UsageError(config.describe(e, f"bad web configuration {cfg.web_config_file}",
                                         echo=False)) from None
    except ConfigError:
        raise
    except (OSError, ValueError) as e:
        raise UsageError(f"web config {cfg.web_config_file}: {e}") from e
    if args.config_check:
        print(cfg.effective(), end="")
        return 0
    # Until the daemon's loop handles SIGTERM, turn it into SystemExit, so that the finally
    # below still stops a launched command and removes its cgroup.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit_on_sigterm)
    # The cgroup first: if it cannot be made, nothing has been started yet.
    cgroup = cgroups.create(cgroups.detect(), cmd[0]) if cmd and cfg.cgroup == "own" else None
    launched: Launched | None = None
    try:
        # Frame numbers let a cgroup count a page its processes share once (exporter/model/fleet.py).
        # lazy_pages: the aggregator decodes each harvest a chunk at a time (SourceOptions).
        source = open_source(cfg.source, cfg.source_options(
            pfns=cfg.targets.all or bool(cfg.targets.cgroups), lazy_pages=True))
        from pageheat.serve.daemon import Daemon

        if cmd:
            launched = _launch(cmd, cgroup, source)
            # Added to the targets configured in the file, environment or flags; without any,
            # only the command (not also the default top-N by RSS: the user asked for CMD).
            wanted = cfg.targets if cfg.targets_configured else Targets(top_rss=0)
            targets = wanted.model_copy(update={"pids": [*wanted.pids, launched.pid]})
            cfg = cfg.model_copy(update={"targets": targets})
        _raise_fd_limit()  # after the launch: the command keeps the limit it was given
        return _run_daemon(Daemon(cfg, source, web))
    finally:
        if launched is not None:
            launched.stop()  # reaps it and removes its cgroup
        elif cgroup is not None:
            cgroups.remove(cgroup)


def _serve_config(args: argparse.Namespace) -> config.Config:
    """Flags over the environment over the file (--config) over the defaults."""
    flags = {"pids": args.pid, "listen": args.listen, "telemetry_path": args.telemetry_path,
             "aging": args.aging, "source": args.source, "cpu_budget": args.cpu_budget,
             "web_config_file": args.web_config, "cgroup": args.cgroup, "tlb_flush": args.tlb_flush,
             "mglru_aging": args.mglru_aging}
    if args.listen is not None and len(args.listen) == 1:
        flags["listen"] = args.listen[0]
    try:
        return config.load(args.config, {k: v for k, v in flags.items() if v is not None})
    except OSError as e:
        raise UsageError(f"config {args.config}: {e.strerror or e}") from e


# What stops serve cleanly (its launched command stopped, its cgroup removed): TERM, and HUP
# (a closed terminal, or `kill -HUP` out of habit: serve has nothing to reload) and USR1/USR2,
# whose default action would kill it without that cleanup.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _raise_fd_limit() -> None:
    """The soft RLIMIT_NOFILE up to the hard one, as the Go runtime does for every exporter
    since Go 1.19: systemd's soft default (1024) is what scrapers' connections and the
    harvests share (serve caps connections at a quarter of it, see serve/http.py)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:  # a hard limit above fs.nr_open, say
            logging.getLogger("pageheat").debug("RLIMIT_NOFILE stays at %d: %s", soft, e)


def _command(remainder: list[str]) -> list[str]:
    return remainder[1:] if remainder[:1] == ["--"] else remainder


def _launch(cmd: list[str], cgroup: cgroups.Cgroup | None, source: Source) -> Launched:
    """Start the command before the daemon starts any thread (see Launched)."""
    from pageheat.serve.launch import Launched

    try:
        return Launched(cmd, cgroup)
    except (FileNotFoundError, PermissionError) as e:
        source.close()
        raise UsageError(f"cannot run {cmd[0]}: {e.strerror}") from e
    except BaseException:
        source.close()
        raise


def _run_daemon(daemon: Daemon) -> int:
    import uvloop

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (*STOP_SIGNALS, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await daemon.run(stop)

    uvloop.run(runner())
    return 0


def _env_config(args: argparse.Namespace) -> config.Config:
    """The settings of snapshot and top: the environment, with --source on top."""
    return config.load(None, {"source": args.source} if args.source else {})


def _top(args: argparse.Namespace) -> int:
    from pageheat.top import run

    cfg = _env_config(args)
    cmd = _command(args.cmd)
    if sum(bool(x) for x in (args.pid, cmd, args.connect)) != 1 and not (args.connect and args.pid):
        raise UsageError("top needs one of --pid PID, --connect URL or -- CMD ARGS...")
    if args.aging < 0.1:
        raise UsageError("--aging must be at least 100ms")
    if args.aggregate < 1:
        raise UsageError("--aggregate must be at least 1")
    pid = args.pid
    if pid and not args.connect:
        pid = _process_of(pid)
        _check_access(pid)
    if not args.connect and (args.connect_user or args.connect_password_file or args.ca_file):
        raise UsageError("--connect-user, --connect-password-file and --ca-file need --connect URL")
    return run(pid, cmd, args.connect, cfg.source, args.aging, args.aggregate,
               connect_user=args.connect_user, password_file=args.connect_password_file,
               ca_file=args.ca_file, options=cfg.source_options(), bins=cfg.bins,
               cold_after=cfg.cold_after)


def _snapshot(args: argparse.Namespace) -> int:
    from pageheat.commands.snapshot import take

    cfg = _env_config(args)
    if args.pages and not args.range:
        raise UsageError("--pages requires --range START-END")
    if args.scans < 1:
        raise UsageError("--scans must be at least 1")
    if args.aging < 0.1:
        raise UsageError("--aging must be at least 100ms")
    pid = _process_of(args.pid)
    _check_access(pid)
    # lazy_pages: where ptwalk hands out TablePages (see SourceOptions), the per-mapping
    # counts come from the scan's per-table popcounts, and only --pages decodes pages.
    source = open_source(cfg.source, cfg.source_options(lazy_pages=True))
    # SIGTERM as SIGINT: take() keeps the scans made so far and the JSON says "interrupted".
    stopped_by: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        stopped_by.append(signum)
        if len(stopped_by) == 1:  # a second one must not cut the summing up of the first short
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        result = take(source, pid, args.aging, args.scans, args.range, args.pages)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the JSON is written whole
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        source.close()
    json.dump(result, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 128 + stopped_by[0] if result.get("interrupted") and stopped_by else 0


def _process_of(pid: int) -> int:
    """The process a pid given explicitly stands for (a thread's process, said once).
    UsageError when there is none to follow (no such pid, a kernel thread, a zombie)."""
    try:
        tgid, note = targets.resolve(pid)
    except targets.PidError as e:
        raise UsageError(str(e)) from e
    if note:
        logging.getLogger("pageheat").warning("%s", note)
    return tgid


def _check_access(pid: int) -> None:
    """UsageError when the process cannot be read or aged (another user's, or one with more
    capabilities, without CAP_SYS_PTRACE / CAP_DAC_OVERRIDE). Not checked when a capability
    that loading any source needs is missing: opening the source then says so (exit 1), and
    without it no process can be followed anyway."""
    if capabilities.missing(capabilities.LOAD):
        return
    try:
        targets.check_access(pid)
    except targets.PidError as e:
        raise UsageError(str(e)) from e


if __name__ == "__main__":
    sys.exit(main())
