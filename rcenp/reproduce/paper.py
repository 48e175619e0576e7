"""The paper's published numbers, typed once, with where each comes from.

Source: Pang, Du, Dong, Zhu, "Towards Robust Detection of Adversarial Examples", NeurIPS 2018,
main body (``CITATION``), typed by hand from its Tables 1-4 and §4.5; the reports cite the table
(``source``). ``tests/test_reproduce_paper.py`` compares them with a text copy of the paper when
one is beside the checkout. Every value is as printed, in the paper's units:

- Table 1: test error in percent (``TABLE1[(depth, objective)][dataset]``);
- Table 2: AUC in units of 10⁻² (``TABLE2[(attack, objective, dataset)][metric]``), ResNet-32;
- Table 3: C&W-wb ratio of f₂(x*) > 0 (a fraction) and mean minimal distortion ‖δ‖₂/√d on the
  0-255 scale (``TABLE3[(objective, dataset)]``), ResNet-32;
- Table 4: black-box AUC in units of 10⁻² on CIFAR-10 (``TABLE4[(target_objective,
  substitute_objective)]``), ResNet-32 substitute, ResNet-56 target. For MNIST the text says only
  "all higher than 95%" (``TABLE4_MNIST_LOWER_BOUND``) and gives transfer rates as bounds
  (``TRANSFER_RATE_UPPER_BOUND``).

Fig. 2's values exist only as plotted curves and bars; they are not typed here.
"""
from __future__ import annotations

CITATION = 'Pang, Du, Dong, Zhu, "Towards Robust Detection of Adversarial Examples", NeurIPS 2018'
SOURCE = f"typed from the tables of {CITATION} (Tables 1-4; §4.5 for Table 4's MNIST bounds)"

DATASETS = ("mnist", "cifar10")  # the paper's two data sets, in its column order
METRICS = ("confidence", "non_me", "log_kd")  # Table 2's columns: Confidence, non-ME, K-density
ATTACKS = ("fgsm", "bim", "ilcm", "jsma", "cw", "cw-hc")  # Table 2's rows

TABLE1_CAPTION = "Table 1: Classification error rates (%) on test sets."
TABLE1 = {  # (depth, objective) -> {dataset: test error in %}
    (32, "ce"): {"mnist": 0.38, "cifar10": 7.13},
    (32, "rce"): {"mnist": 0.29, "cifar10": 7.02},
    (56, "ce"): {"mnist": 0.36, "cifar10": 6.49},
    (56, "rce"): {"mnist": 0.32, "cifar10": 6.60},
}

TABLE2_CAPTION = ("Table 2: AUC-scores (10^-2) of adversarial examples. The model of target networks is "
                  "Resnet-32. Values are calculated on the examples which are correctly classified as normal "
                  "examples and then misclassified as adversarial counterparts. Bandwidths: sigma2_CE = 1/0.26, "
                  "sigma2_RCE = 0.1/0.26.")


def _row(mnist, cifar):
    return {"mnist": dict(zip(METRICS, mnist)), "cifar10": dict(zip(METRICS, cifar))}


_TABLE2_ROWS = {  # (attack, objective) -> dataset -> metric -> AUC in 10^-2
    ("fgsm", "ce"): _row((79.7, 66.8, 98.8), (71.5, 66.9, 99.7)),
    ("fgsm", "rce"): _row((98.8, 98.6, 99.4), (92.6, 91.4, 98.0)),
    ("bim", "ce"): _row((88.9, 70.5, 90.0), (0.0, 64.6, 100.0)),
    ("bim", "rce"): _row((91.7, 90.6, 91.8), (0.7, 70.2, 100.0)),
    ("ilcm", "ce"): _row((98.4, 50.4, 96.2), (16.4, 37.1, 84.2)),
    ("ilcm", "rce"): _row((100.0, 97.0, 98.6), (64.1, 77.8, 93.9)),
    ("jsma", "ce"): _row((98.6, 60.1, 97.7), (99.2, 27.3, 85.8)),
    ("jsma", "rce"): _row((100.0, 99.4, 99.0), (99.5, 91.9, 95.4)),
    ("cw", "ce"): _row((98.6, 64.1, 99.4), (99.5, 50.2, 95.3)),
    ("cw", "rce"): _row((100.0, 99.5, 99.8), (99.6, 94.7, 98.2)),
    ("cw-hc", "ce"): _row((0.0, 40.0, 91.1), (0.0, 28.8, 75.4)),
    ("cw-hc", "rce"): _row((0.1, 93.4, 99.6), (0.2, 53.6, 91.8)),
}
TABLE2 = {(attack, objective, dataset): metrics
          for (attack, objective), by_dataset in _TABLE2_ROWS.items() for dataset, metrics in by_dataset.items()}

TABLE3_CAPTION = ("Table 3: The ratios of f2(x*) > 0 and minimal distortions of the adversarial examples "
                  "crafted by C&W-wb. Model is Resnet-32.")
TABLE3 = {  # (objective, dataset) -> ratio (fraction), distortion (||d||_2/sqrt(d), 0-255 scale)
    ("ce", "mnist"): {"ratio": 0.01, "distortion": 17.12},
    ("ce", "cifar10"): {"ratio": 0.00, "distortion": 1.26},
    ("rce", "mnist"): {"ratio": 0.77, "distortion": 31.59},
    ("rce", "cifar10"): {"ratio": 0.12, "distortion": 3.89},
}

TABLE4_CAPTION = ("Table 4: AUC-scores (10^-2) on CIFAR-10. Resnet-32 is the substitute model and Resnet-56 "
                  "is the target model.")
TABLE4 = {  # (target objective, substitute objective) -> AUC in 10^-2, CIFAR-10
    ("ce", "ce"): 75.0, ("ce", "rce"): 90.8,
    ("rce", "ce"): 89.1, ("rce", "rce"): 84.9,
}
TABLE4_MNIST_LOWER_BOUND = 95.0  # §4.5: "the AUC-scores in the same cases on MNIST are all higher than 95%"
# §4.5: "less than 50% of them can make the target model misclassify on MNIST and less than 15% on CIFAR-10"
TRANSFER_RATE_UPPER_BOUND = {"mnist": 0.50, "cifar10": 0.15}

FIGURE1 = "Fig. 1b/1c: t-SNE of the final hidden vector z of 1,000 CIFAR-10 test examples, CE and RCE (§4.2)"
FIGURE2 = ("Fig. 2: (a) accuracy under FGSM/BIM/ILCM/JSMA against epsilon, (b) C&W and C&W-hc minimal "
           "distortion, Resnet-32 CE vs RCE (§4.3); plotted only, no printed values")
FIGURE3 = "Fig. 3: normal test images and C&W-wb adversarial examples on Resnet-32 (CE) and (RCE) (§4.4)"


def table2(attack: str, objective: str, dataset: str, metric: str) -> float | None:
    """The paper's Table 2 AUC (units 10⁻²) for one cell, or None where the paper has no such cell
    (Fashion-MNIST, or an attack the table does not list)."""
    return TABLE2.get((attack, objective, dataset), {}).get(metric)


def source(table: str) -> str | None:
    """Where a report table's paper values come from: ``"table2"`` → 'Table 2 of Pang, Du, ...,
    NeurIPS 2018 (typed from the paper)'; None for a table without paper values (beyond, sanity)."""
    where = {"table1": "Table 1", "table2": "Table 2", "table3": "Table 3",
             "table4": "Table 4 (MNIST: the bounds of §4.5)"}
    if table == "fig2":
        return f"Fig. 2 of {CITATION}: plotted there only, no values typed"
    return f"{where[table]} of {CITATION} (typed from the paper)" if table in where else None
