"""The evaluation table printed after training and by ``mmpretrain eval``."""

from __future__ import annotations


def format_table(metrics: dict[str, float]) -> str:
    ks = sorted(int(name.split("@")[1]) for name in metrics if name.startswith("i2t_recall@"))
    lines = [
        f"retrieval over {int(metrics['candidates'])} held-out pairs",
        f"{'':<22}" + "".join(f"{'R@' + str(k):>8}" for k in ks),
    ]
    rows = [
        ("image->text", "i2t_recall"),
        ("text->image", "t2i_recall"),
        ("image->text ITM rerank", "i2t_rerank_recall"),
        ("text->image ITM rerank", "t2i_rerank_recall"),
        ("chance", "chance"),
    ]
    for label, prefix in rows:
        if f"{prefix}@{ks[0]}" in metrics:
            lines.append(f"{label:<22}" + "".join(f"{metrics[f'{prefix}@{k}']:>8.3f}" for k in ks))
    if "itm_accuracy" in metrics:
        lines.append(
            f"ITM accuracy, positives vs other captions: {metrics['itm_accuracy']:.3f}, "
            f"vs the ITC-hardest caption: {metrics['itm_accuracy_hard']:.3f} (chance 0.500)"
        )
    if "zeroshot_top1" in metrics:
        top5 = f", top-5 {metrics['zeroshot_top5']:.3f}" if "zeroshot_top5" in metrics else ""
        lines.append(
            f"zero-shot over {int(metrics['zeroshot_classes'])} classes, "
            f"{int(metrics['zeroshot_samples'])} images: top-1 {metrics['zeroshot_top1']:.3f}"
            f"{top5} (chance {metrics['zeroshot_chance@1']:.3f})"
        )
    return "\n".join(lines)
