"""The report as a page: self-contained HTML (figures embedded) and the dashboard note (Markdown)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from msatune.studies.refit.table import ranking_line
from msatune.studies.store.ensemble_records import mae_of

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta{color:#555} table{border-collapse:collapse;margin:1em 0;width:100%}
th,td{border:1px solid #ccc;padding:.35em .6em;text-align:left;vertical-align:top;font-size:14px}
th{background:#f3f3f3} .PASS{background:#d9f2d9;font-weight:bold} .FAIL{background:#f8d7d7;font-weight:bold}
.na{background:#eee} img{max-width:100%;border:1px solid #ddd;margin:.5em 0} code{background:#f3f3f3;padding:.1em .3em}
.note{color:#8a5a00}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits}f}"
    return str(v)


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}." if text else ""


def _reference_html(reference: dict[str, Any] | None) -> str:
    """One line: the constant predictor's and the noise floor's MAE on valid and test."""
    bits = []
    for split in ("valid", "test"):
        ref = (reference or {}).get(split) or {}
        if ref.get("constant_mae") is None:
            continue
        text = f"{split}: constant predictor MAE {_fmt(ref['constant_mae'])}"
        if ref.get("floor_mae") is not None:
            text += f", noise floor {_fmt(ref['floor_mae'])}"
        bits.append(text)
    if not bits:
        return ""
    return ("<p class='meta'>Yardsticks: " + html.escape("; ".join(bits)) +
            " (a model is worth something only below the constant predictor).</p>")


def importance_blurb(basis: dict[str, Any] | None) -> str:
    """What the importance figure shows and what it rests on (``Importance.as_dict()``)."""
    if not (basis and basis.get("basis")):
        return ("PED-ANOVA (Optuna): how much each hyperparameter sets the best trials apart from "
                "the rest, as shares of the total.")
    return (f"{_sentence(basis['basis'])} ASHA lets few trials finish, so the importance is taken "
            "at the deepest epoch where it compared enough trials: pruned trials count there with "
            "the value they had reached; failed trials are left out.")


def render_html(payload: dict[str, Any], figures: dict[str, Path]) -> str:
    """The self-contained report page (figures embedded as base64 PNG)."""
    e = html.escape
    name = payload["study"]
    c = payload["counts"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>msatune report: {e(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>msatune report: study <code>{e(name)}</code></h1>",
        f"<p class='meta'>generated {e(payload['generated'])}; created {e(str(payload.get('created') or '-'))}; "
        f"data {e(str(payload.get('data_path') or '-'))}; budget {e(str(payload.get('budget') or '-'))} trials "
        f"x up to {e(str(payload.get('max_epochs') or '-'))} epochs</p>",
        f"<p>{c['COMPLETE']} complete, {c['PRUNED']} stopped early by ASHA (PRUNED), {c['FAIL']} failed, "
        f"{c.get('INTERRUPTED', 0)} interrupted by a stopped driver and run again, "
        f"{c['RUNNING']} running, {c['WAITING']} queued. {e(_sentence(payload.get('value_rule', '')))}</p>",
        _reference_html(payload.get("reference")),
        "<h2>Success criteria</h2><table><tr><th>criterion</th><th>numbers</th><th>result</th></tr>",
    ]
    for row in payload["criteria_table"]:
        cls = {"PASS": "PASS", "FAIL": "FAIL"}.get(row["result"], "na")
        parts.append(f"<tr><td>{e(row['criterion'])}</td><td>{e(row['numbers'])}</td>"
                     f"<td class='{cls}'>{e(row['result'])}</td></tr>")
    parts.append("</table>")
    best = payload.get("best")
    if best:
        params = ", ".join(f"{k}={_fmt(v, 3)}" for k, v in sorted(best["params"].items()))
        preset = f" (the {e(best['preset'])} preset)" if best.get("preset") else ""
        parts.append(f"<p>Best trial <b>#{best['trial']}</b>{preset}: validation MAE {_fmt(best['val_mae'])}, "
                     f"test MAE {_fmt(best['test_mae'])}; {e(params)}<br>checkpoint <code>{e(str(best['checkpoint']))}</code></p>")
    if payload.get("ranking"):
        parts.append(f"<p>{e(ranking_line(payload['ranking']))}.</p>")
    sections = [
        ("history", "Optimization history", "Each trial's best validation MAE; the red line is the best so far. "
         "Trials stopped early by ASHA show their best validation MAE up to the epoch they were stopped. "
         "The constant predictor (the median of the validation labels) and the noise floor are drawn "
         "for scale: a trial above the constant line learned nothing."),
        ("curves", "Learning curves", "Training and validation MAE per epoch. A validation curve far above the "
         "training curve is overfitting (the criterion is a gap < 0.3 at the best epoch)."),
        ("gradients", "Gradient norms", "The L2 norm of all gradients per training step (before clipping), as the mean "
         "and the max over each epoch's steps, and each branch's mean (text, audio, video encoders, fusion, head; "
         "'shared': layers several branches use). A max far above the earlier epochs marks where training became "
         "unstable; the criteria table names that epoch beside the stability criterion."),
        ("attention", "Modality weights and attention", "What the best trials' models attend to on the validation "
         "split at their best epoch: the adaptive fusion's weights of text, audio and video (means over samples), "
         "and each cross-modal attention map (mean over samples and heads; a row is a query step, its values "
         "the weights over the other modality's steps)."),
        ("importance", "Hyperparameter importance", importance_blurb(payload.get("importance_basis"))),
        ("ensemble", "Ensemble vs best single trial", "Recorded by msatune ensemble; members were chosen on "
         "validation predictions only, test is reported, never used to choose. The axis is zoomed to the "
         "values; each ensemble bar is labelled with its change vs the best single trial."),
    ]
    for key, title, blurb in sections:
        if key in figures:
            parts.append(f"<h2>{e(title)}</h2><p>{e(blurb)}</p>{_img(figures[key], title)}")
    if payload.get("ensembles"):
        parts.append("<table><tr><th>ensemble</th><th>split</th><th>metric</th><th>best single</th>"
                     "<th>ensemble</th></tr>")
        for key, rec in payload["ensembles"].items():
            for split in ("valid", "test"):
                ens, single = rec["ensemble"].get(split) or {}, rec["best_single"].get(split) or {}
                for metric in [m for m in ens if isinstance(ens[m], (int, float))]:
                    parts.append(f"<tr><td>{e(key)}</td><td>{split}</td><td>{e(metric)}</td>"
                                 f"<td>{_fmt(single.get(metric))}</td><td>{_fmt(ens[metric])}</td></tr>")
        parts.append("</table>")
        ref = _reference_html(payload.get("reference"))
        if ref:
            parts.append(ref)
        for key, rec in payload["ensembles"].items():
            if rec.get("members"):
                listed = ", ".join(f"#{m.get('trial')} {m.get('family') or '-'} ({_fmt(m.get('weight'), 3)})"
                                   for m in rec["members"])
                parts.append(f"<p>{e(key)} members (family, weight): {e(listed)}</p>")
            if rec.get("cv_valid_mae") is not None:
                parts.append(f"<p>{e(key)}: validation MAE of the selection under cross-validated refit "
                             f"{_fmt(rec['cv_valid_mae'])} (in-sample {_fmt(mae_of(rec['ensemble'].get('valid')))}); "
                             "the gap is the selection's optimism.</p>")
    parts.extend(refit_html(payload.get("refit")))
    if payload.get("curves"):
        parts.append("<h2>Trials shown</h2><table><tr><th>trial</th><th>family</th><th>role</th><th>state</th>"
                     "<th>epochs</th><th>best val MAE</th><th>best epoch</th><th>train MAE source</th></tr>")
        for cv in payload["curves"]:
            parts.append(f"<tr><td>#{cv['number']}</td><td>{e(str(cv.get('family') or '-'))}</td>"
                         f"<td>{e(str(cv['role']))}</td><td>{cv['state']}</td>"
                         f"<td>{len(cv['epochs'])}</td><td>{_fmt(min(cv['val_mae']) if cv['val_mae'] else None)}</td>"
                         f"<td>{_fmt(cv['best_epoch'])}</td><td>{e(str(cv['train_source'] or '-'))}</td></tr>")
        parts.append("</table>")
    for note in payload.get("notes", []):
        parts.append(f"<p class='note'>Note: {e(note)}</p>")
    if payload.get("tensorboard"):
        parts.append(f"<p>Per-epoch metrics of every trial in TensorBoard: <code>{e(payload['tensorboard'])}</code></p>")
    parts.append("<p class='meta'>MAE is in sentiment score units (labels in [-3, 3]). Validation MAE per epoch "
                 "comes from the study store; training MAE from each trial's Ray progress.csv; test MAE from the "
                 "best checkpoint's predictions.</p></body></html>")
    return "\n".join(parts)


def refit_html(table: dict[str, Any] | None) -> list[str]:
    """The refit table (``msatune refit``): validation MAE vs the refit's measure (out-of-fold MAE,
    or a seeds refit's averaged valid MAE) and the rank change."""
    if not table or not table.get("configs"):
        return []
    e = html.escape
    if table.get("scheme") == "seeds":
        head = (f"<h2>Refit: one trial's validation MAE vs its seeds' averaged</h2><p>The top configurations "
                f"trained {table['repeats']} more time(s) at other seeds on the study's train split with their "
                "own recipe; each is scored by the valid MAE of its seeds' average (its trial's model among "
                "them), which is what its bag deploys.")
        columns = {"seeds' valid MAE": "oof_mae", "per-seed MAE std": "oof_mae_std_repeats",
                   "per-seed MAE mean": "seed_mae_mean", "seeds rank": "rank_oof", "rank change": "rank_change",
                   "repeats": None}
    else:
        head = (f"<h2>Refit: validation MAE vs out-of-fold MAE</h2><p>The top configurations retrained on "
                f"{table['folds']} stratified folds of train+valid ({table['repeats']} repeat(s)); the out-of-fold "
                "MAE scores every train+valid sample with the fold model that did not train on it, a steadier "
                "ranking than the small validation split.")
        columns = {"OOF MAE": "oof_mae", "OOF MAE std (repeats)": "oof_mae_std_repeats",
                   "fold MAE mean": "fold_mae_mean", "fold MAE std": "fold_mae_std", "OOF rank": "rank_oof",
                   "rank change": "rank_change", "folds": None}
    header = "".join(f"<th>{e(c)}</th>" for c in ("trial", "preset", "val MAE", "val rank", *columns))
    parts = [head + " Rank change: positive means the refit ranks the configuration higher.</p><table><tr>"
             + header + "</tr>"]
    for r in table["configs"]:
        values = [f"#{r['trial']}", r.get("preset") or "", r.get("val_mae"), r.get("rank_val"),
                  *(r.get(k) if k else f"{r['folds_done']}/{r['folds_total']}" for k in columns.values())]
        parts.append("<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in values) + "</tr>")
    parts.append("</table>")
    return parts


# --- attaching the report to the study (note + artifacts in optuna-dashboard) --------------------

def note_markdown(payload: dict[str, Any]) -> str:
    lines = [f"### msatune report ({payload['generated']})", "", "| criterion | numbers | result |", "|---|---|---|"]
    for row in payload["criteria_table"]:
        lines.append(f"| {row['criterion']} | {row['numbers'].replace('|', '/')} | **{row['result']}** |")
    for key, rec in payload.get("ensembles", {}).items():
        s, en = rec["best_single"], rec["ensemble"]
        lines.append("")
        lines.append(f"Ensemble **{key}**: test MAE {_fmt(mae_of(en.get('test')))} vs best single "
                     f"#{s.get('trial')} {_fmt(mae_of(s.get('test')))}")
    lines += ["", "Figures and report.html are attached as study artifacts."]
    return "\n".join(lines)
