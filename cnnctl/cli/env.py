"""`cnnctl env`: this machine as cnnctl sees it, and what it would choose here."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli.common import out, print_json


def env(
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of the table.")] = False,
) -> None:
    """Cores, memory, the CPU flags that matter (AVX2, AVX-512, avx512_bf16, AMX), torch and
    onnxruntime versions and providers, CUDA devices, and what `--amp auto`, threads and the
    evaluation memory budget pick on this machine.

    Put its output next to any figure you publish. CNNCTL_CPU_FLAGS="avx2 fma" shows what cnnctl
    would choose on another CPU.
    """
    from cnnctl.machine import report

    r = report().to_dict()
    if json_:
        print_json(r)
        return
    from rich.markup import escape
    from rich.table import Table

    cpu, mem, ch = r["cpu"], r["memory"], r["choices"]
    table = Table(title="cnnctl env", show_header=False)
    table.add_column("what")
    table.add_column("value")
    flags = ", ".join(
        f"{name} {'yes' if has else 'no'}"
        for name, has in cpu["flags"].items()
        if has or name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    )
    rows = [
        (
            "cpu",
            f"{cpu['model']} ({cpu['arch']}){'  [flags simulated by CNNCTL_CPU_FLAGS]' if cpu['simulated'] else ''}",
        ),
        ("cores", f"{cpu['cores']} usable ({cpu['logical_cpus']} logical)"),
        ("cpu flags", flags),
        ("native bf16", "yes" if cpu["native_bf16"] else "no"),
        ("memory", f"{mem['total_bytes'] / 2**30:.1f} GiB total, {mem['available_bytes'] / 2**30:.1f} GiB available"),
        ("python", r["python"]),
        *[(name, version) for name, version in r["versions"].items()],
        ("onnxruntime providers", ", ".join(r["onnxruntime_providers"]) or "none"),
        (
            "cuda devices",
            "; ".join(
                f"{d['index']}: {d['name']} (sm {d['capability']}, {d['memory_bytes'] / 2**30:.0f} GiB, bf16 "
                f"{'yes' if d['bf16'] else 'no'})"
                for d in r["cuda"]
            )
            or "none",
        ),
        ("train device", ch["device"]),
        ("--amp auto", f"{ch['amp']} ({ch['amp_reason']})"),
        ("threads", f"{ch['threads']} ({ch['threads_reason']})"),
        ("eval memory budget", f"{ch['eval_memory_budget_bytes'] / 2**20:.0f} MiB ({ch['eval_memory_budget_reason']})"),
    ]
    for what, value in rows:
        table.add_row(what, escape(str(value)))
    out().print(table)


def register(app: typer.Typer) -> None:
    app.command("env")(env)
