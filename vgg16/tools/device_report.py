"""device_report.json and device_report.md from the device check's findings (vgg16.tools.device_check)."""

from __future__ import annotations

import json
from pathlib import Path


def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _old_table(report: dict) -> list:
    """The old scripts' results table (NAME | Acc@1 | FPS | Epochs | AMP_Type | Torch), one row per trainer run."""
    env = report["environment"]
    lines = ["| NAME | Acc@1 | FPS | Epochs | AMP_Type | Torch |", "|---|---|---|---|---|---|"]
    for item in report["items"]:
        if item["kind"] == "trainer" and item["status"] == "measured":
            lines.append(f"| 1p-{env.get('device_name', report['device'])} ({item['name']}) | {item['acc1']:.3f} | "
                         f"{item['fps']:.1f} | {item['epochs']} | {item['mixed_precision']} | {env['torch']} |")
    return lines if len(lines) > 2 else []


def markdown(report: dict) -> str:
    env, plan = report["environment"], report["plan"]
    out = [f"# Device check: {env.get('device_name', report['device'])} ({report['device']})", "",
           " ".join(f"{k} {v};" for k, v in env.items() if k != "device_name").rstrip(";"), "",
           f"{'Quick' if report['quick'] else 'Full'} check, {plan['arch']} at {plan['image_size']} px; "
           f"{report.get('elapsed_s', 0):.0f} s of a {report['budget_s']:.0f} s budget"
           + ("" if report.get("complete") else " (cut short: items below are the ones that ran)") + ".", ""]
    table = _old_table(report)
    if table:
        out += ["## Results table (the old scripts' columns)", "",
                "Acc@1 here is on the generated photographs after a few epochs: a check that the run learns, not an "
                "ImageNet figure.", "", *table, ""]
    steps = [i for i in report["items"] if i["kind"] == "step"]
    if steps:
        out += ["## Training step: ours against a plain PyTorch loop (synthetic data)", "",
                "| setting | batch | ours images/s | plain loop images/s | ratio | FLOP utilisation |",
                "|---|---|---|---|---|---|"]
        for item in steps:
            if item["status"] != "measured":
                out.append(f"| {item['name']} | - | {item['status']}: {item['reason']} | | | |")
                continue
            for r in item["rows"]:
                if r.get("oom"):
                    out.append(f"| {item['name']} | {r['batch_size']} | out of memory | | | |")
                else:
                    util = f"{100 * r['flop_utilisation']:.1f}% of {r['peak_tflops']:g} TFLOP/s" \
                        if "flop_utilisation" in r else "-"
                    out.append(f"| {item['name']} | {r['batch_size']} | {_f(r['images_per_s'])} | "
                               f"{_f(r['baseline_images_per_s'])} | {r['ratio']:.3f} | {util} |")
        out.append("")
    for item in report["items"]:
        if item["kind"] == "pipeline":
            out += ["## Input pipeline: files to uint8 batches on the device", ""]
            if item["status"] != "measured":
                out += [f"{item['status']}: {item['reason']}", ""]
                continue
            out += [f"{item['images']}.", "", "| way | workers | batch | images/s |", "|---|---|---|---|"]
            for r in item["rows"]:
                out.append(f"| {r['way']} | {r.get('workers', '-')} | {r.get('batch_size', '-')} | "
                           + (_f(r["images_per_s"]) if r["status"] == "measured" else f"skipped: {r['reason']}") + " |")
            out.append("")
    out += ["## Every item", "", "| item | status | figures or reason | seconds |", "|---|---|---|---|"]
    for item in report["items"]:
        out.append(f"| {item['kind']}: {item['name']} | {item['status']} | {_summary(item)} | {item['seconds']} |")
    return "\n".join(out) + "\n"


def _summary(item: dict) -> str:
    if item.get("reason"):
        return item["reason"].replace("|", "/")
    if item["kind"] == "trainer":
        return (f"FPS {item['fps']:.1f}, Acc@1 {item['acc1']:.2f}, {item['steps']} steps in {item['wall_s']} s, "
                f"loss {'finite' if item['finite_loss'] else 'NOT finite'} throughout, "
                f"{item['val_images']}/{item['expected_val_images']} validation images counted, "
                f"{item['bad_images']} unreadable; `{item['command']}`")
    if item["kind"] == "correctness" and item["name"].startswith("mid-epoch resume"):
        return (f"{item['tensors'] - len(item['differing'])}/{item['tensors']} tensors bit-identical, "
                f"resumed mid-epoch: {item['resumed_mid_epoch']}, {item['val_images']}/{item['expected_val_images']} "
                f"validation images counted; {item['detail']}")
    if item["kind"] == "correctness" and item["name"].startswith("fp16"):
        return (f"{item['skipped_steps']} of {item['steps']} steps skipped at loss scale 2^40; the scaler halved its "
                f"scale {item['scaler_halvings']} times")
    if item["kind"] == "step":
        best = max((r for r in item["rows"] if not r.get("oom")), key=lambda r: r["images_per_s"], default=None)
        return f"best {_f(best['images_per_s'])} images/s at batch {best['batch_size']}, ratio {best['ratio']:.3f}" \
            if best else "every batch size ran out of memory"
    if item["kind"] == "pipeline":
        return ", ".join(f"{r['way']} {_f(r['images_per_s'])}/s" for r in item["rows"] if r["status"] == "measured")
    return item.get("folder", "")


def write_reports(out: Path, report: dict) -> None:
    (out / "device_report.json").write_text(json.dumps(report, indent=2))
    (out / "device_report.md").write_text(markdown(report))
