"""The paper's design-space points (Iandola et al., 2017, sec. 5, Fig. 3 and Table 3) and the
metaparameters a sweep may hold fixed; shared by ``sweep`` and ``report``."""


# Paper sweeps (section 5): SR at pct3x3 = 0.5; pct3x3 at SR = 0.5; section 6: bypass.
SWEEPS = {
    "sr": [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0],
    "pct3x3": [0.01, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 0.99],
    "bypass": ["none", "simple", "complex"],
}
# What the paper reports on ImageNet (Figure 3, Table 3), to place beside our points.
PAPER = {
    "sr": [(0.125, 4.8, None, 80.3), (0.75, 19.0, None, 86.0)],
    "pct3x3": [(0.5, None, None, 85.6)],
    "bypass": [("none", 4.8, 57.5, 80.3), ("simple", 4.8, 60.4, 82.5), ("complex", 7.7, 58.8, 82.0)],
}


# Metaparameters a sweep may hold fixed at other values than the paper's (a narrower design
# space for small budgets): expand filters base_e + incr_e * floor(i / freq).
WIDTH_KEYS = ("base_e", "incr_e", "freq")
