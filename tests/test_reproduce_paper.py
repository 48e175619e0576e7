"""``rcenp.reproduce``: the paper's values typed once (``paper``) against the paper's text, and each
sanity check on numbers built to fail it and on numbers that pass."""
import os
import re
from pathlib import Path

import pytest

from rcenp.reproduce import budgets, paper, sanity
from tests.reproduce_fakes import ROOT

PAPER_CANDIDATES = [ROOT.parent / "shared" / "paper", Path(os.environ.get("RCENP_DATA") or "/nonexistent").parent / "paper",
                    Path("/work/shared/paper")]


def paper_text() -> str:
    for folder in PAPER_CANDIDATES:
        path = folder / "pang2018-towards-robust-detection.txt"
        if path.is_file():
            return path.read_text()
    pytest.skip("the paper's text (shared/paper/) is not beside this checkout")


def numbers(line):
    return [float(x) for x in re.findall(r"(?<![\w.-])\d+\.\d+", line)]


def test_table1_matches_the_paper_text():
    text = paper_text()
    for (depth, objective), values in paper.TABLE1.items():
        line = next(l for l in text.splitlines() if l.startswith(f"Resnet-{depth} ({objective.upper()})"))
        assert numbers(line) == [values["mnist"], values["cifar10"]], line


def test_table2_matches_the_paper_text():
    text = paper_text()
    block = text[text.index("Attack\tObj.\tMNIST"):text.index("Figure 2:")]
    attack = None
    names = {"FGSM": "fgsm", "BIM": "bim", "ILCM": "ilcm", "JSMA": "jsma", "C&W": "cw", "C&W-hc": "cw-hc"}
    seen = 0
    for line in block.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[1] not in ("CE", "RCE"):
            continue
        attack = names[fields[0]] if fields[0] else attack
        values = numbers("\t".join(fields[2:]))
        objective = fields[1].lower()
        expected = [paper.TABLE2[(attack, objective, d)][m] for d in ("mnist", "cifar10") for m in paper.METRICS]
        assert values == expected, line
        seen += 1
    assert seen == 12


def test_tables_3_and_4_match_the_paper_text():
    text = paper_text()
    lines = text.splitlines()
    for objective in ("ce", "rce"):
        line = next(l for l in lines if l.startswith(objective.upper() + "\t"))
        t3 = paper.TABLE3
        assert numbers(line) == [t3[(objective, "mnist")]["ratio"], t3[(objective, "mnist")]["distortion"],
                                 t3[(objective, "cifar10")]["ratio"], t3[(objective, "cifar10")]["distortion"]]
        line = next(l for l in lines if l.startswith(f"Res.-56 ({objective.upper()})"))
        assert numbers(line) == [paper.TABLE4[(objective, "ce")], paper.TABLE4[(objective, "rce")]]
    assert "all higher than 95%" in text and "less than 50%" in text and "less than 15% on CIFAR-10" in text
    assert paper.TABLE4_MNIST_LOWER_BOUND == 95.0 and paper.TRANSFER_RATE_UPPER_BOUND == {"mnist": 0.5, "cifar10": 0.15}


def test_the_paper_is_cited_not_a_file_outside_a_clone():
    """The reports cite the paper and its table; no path a user's clone lacks."""
    assert "shared/" not in paper.SOURCE and ".txt" not in paper.SOURCE
    assert "Pang, Du, Dong, Zhu" in paper.SOURCE and "NeurIPS 2018" in paper.SOURCE
    for n in (1, 2, 3, 4):
        cited = paper.source(f"table{n}")
        assert cited.startswith(f"Table {n}") and paper.CITATION in cited and "shared/" not in cited
    assert paper.source("beyond") is None and paper.source("sanity") is None
    fig2 = paper.source("fig2")   # read "(plotted only: no values typed) ... (typed from the paper)"
    assert fig2.startswith("Fig. 2 of ") and fig2.endswith(": plotted there only, no values typed")
    assert "typed from the paper" not in fig2


def test_a_difference_that_rounds_to_zero_has_no_minus():
    """Table 2's JSMA RCE confidence read 'paper 100.0, Δ -0.0'."""
    from rcenp.reproduce.tables import _signed

    assert [_signed(v, 1) for v in (-0.04, 0.04, 0.0, -0.06, 1.25)] == ["+0.0", "+0.0", "+0.0", "-0.1", "+1.2"]
    assert _signed(-0.004, 2) == "+0.00" and _signed(-0.005001, 2) == "-0.01"


# ---- sanity checks: each FLAGs on a case built to fail it, and PASSes on a good one ---------------
def test_monotone_in_eps():
    theta = sanity.monotone_in_eps("m jsma", [(0.1, 0.50, 1000), (0.2, 0.60, 1000)], "θ")
    assert theta["status"] == "FLAG" and theta["check"] == "accuracy non-increasing in θ"
    assert "θ = 0.2" in theta["detail"] and "ε" not in theta["detail"]
    good = sanity.monotone_in_eps("m", [(0.1, 0.50, 1000), (0.2, 0.30, 1000), (0.3, 0.30, 1000)])
    bad = sanity.monotone_in_eps("m", [(0.1, 0.50, 1000), (0.2, 0.30, 1000), (0.3, 0.40, 1000)])
    assert good["status"] == "PASS" and bad["status"] == "FLAG"
    assert "ε = 0.3" in bad["detail"] and bad["value"] == pytest.approx(0.10)
    noise = sanity.monotone_in_eps("m", [(0.1, 0.50, 1000), (0.2, 0.501, 1000)])  # one image: tolerated
    assert noise["status"] == "PASS"
    assert noise["detail"] == ("accuracy 0.1 pp higher at ε = 0.2 than at ε = 0.1, within the tolerance of one "
                               "image or 0.5 pp, whichever is larger")                # a PASS that says why
    assert bad["detail"].endswith(", beyond the tolerance of one image or 0.5 pp, whichever is larger")
    assert sanity.monotone_in_eps("m", [(0.1, 0.5, 10)])["status"] == "n/a"
    flat = sanity.monotone_in_eps("m jsma", [(0.08, 1.0, 20), (0.16, 1.0, 20)], "θ")   # the attack moved nothing
    assert flat["status"] == "n/a" and flat["detail"].startswith("accuracy 100.0% at every θ")


def test_iterative_vs_single():
    fgsm = [(0.1, 0.40, 500), (0.2, 0.20, 500)]
    assert sanity.iterative_vs_single("m", fgsm, [(0.1, 0.10, 500), (0.2, 0.00, 500)])["status"] == "PASS"
    bad = sanity.iterative_vs_single("m", fgsm, [(0.1, 0.10, 500), (0.2, 0.35, 500)])
    assert bad["status"] == "FLAG" and "ε = 0.2" in bad["detail"]
    assert sanity.iterative_vs_single("m", fgsm, [(0.3, 0.1, 500)])["status"] == "n/a"
    within = sanity.iterative_vs_single("m", fgsm, [(0.1, 0.402, 500), (0.2, 0.00, 500)])  # one image above
    assert within["status"] == "PASS" and "0.2 pp at ε = 0.1" in within["detail"]
    for level in (0.0, 0.98):  # both at 0%, or neither moved a prediction: a pass would say nothing
        flat = [(0.1, level, 500), (0.2, level, 500)]
        assert sanity.iterative_vs_single("m", flat, flat)["status"] == "n/a"


def summary(n=100, clean_correct=100, efficient=100, zero=0.0, evasion=None):
    s = {"counts": {"n": n, "clean_correct": clean_correct, "efficient": efficient}, "zero_grad_fraction_mean": zero}
    if evasion is not None:
        s["detection"] = {"threshold": {"undetected_misclassified_rate": evasion}}
    return s


def test_unbounded_bim():
    assert sanity.unbounded_bim("m", summary(efficient=100))["status"] == "PASS"
    assert sanity.unbounded_bim("m", summary(efficient=90))["status"] == "FLAG"
    assert sanity.unbounded_bim("m", None)["status"] == "n/a"


def test_whitebox_vs_transfer():
    assert sanity.whitebox_vs_transfer("s → t", summary(evasion=0.6), summary(evasion=0.2))["status"] == "PASS"
    bad = sanity.whitebox_vs_transfer("s → t", summary(evasion=0.1), summary(evasion=0.3))
    assert bad["status"] == "FLAG" and "white-box 10.0%" in bad["detail"]
    assert sanity.whitebox_vs_transfer("s → t", summary(evasion=0.1), None)["status"] == "n/a"
    for whitebox, transfer, missing in ((None, summary(evasion=0.1), "the target's own C&W-wb cell is not"),
                                        (summary(evasion=0.1), None, "the transfer cell is not"),
                                        (None, None, "neither the target's own C&W-wb cell nor the transfer cell is")):
        row = sanity.whitebox_vs_transfer("s → t", whitebox, transfer)   # the one that is missing, named
        assert row["status"] == "n/a" and row["detail"] == f"{missing} finished (pending, or not available)"
    nothing = sanity.whitebox_vs_transfer("s → t", summary(evasion=0.0), summary(evasion=0.0))  # both stopped
    assert nothing["status"] == "n/a" and "nothing to compare" in nothing["detail"]
    assert sanity.whitebox_vs_transfer("s → t", summary(evasion=0.0), summary(evasion=0.05))["status"] == "FLAG"


def test_zero_gradient():
    assert sanity.zero_gradient("m fgsm", summary(zero=0.0))["status"] == "PASS"
    assert sanity.zero_gradient("m fgsm", summary(zero=0.4))["status"] == "FLAG"


def test_cw_success():
    assert sanity.cw_success("m", summary(efficient=100), True)["status"] == "PASS"
    bad = sanity.cw_success("m", summary(efficient=60), True)
    assert bad["status"] == "FLAG" and "paper budget" in bad["detail"]
    assert "REDUCED" in sanity.cw_success("m", summary(efficient=60), False)["detail"]
    # at a reduced budget the check's premise does not hold: n/a (neither PASS nor FLAG), rate kept as its value
    smoke = budgets.get_budget("smoke")
    for efficient in (60, 100):
        reduced = sanity.cw_success("m", summary(efficient=efficient), smoke.full_cw_budget, smoke.cw)
        assert reduced["status"] == "n/a" and reduced["value"] == pytest.approx(efficient / 100)
        assert "REDUCED budget: 2 × 20 iterations" in reduced["detail"] and "9 × 10,000" in reduced["detail"]
        assert f"{efficient} of 100" in reduced["detail"]
