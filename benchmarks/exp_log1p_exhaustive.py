"""Every float32 |x| in [0, 86) through the CPU kernel's own exp and log1p (csrc/scalar_math.h, included as it is),
against float64 libm: the worst relative error of the element loss log1p(e^-|x|) as the kernel sums it (hi + lo in
float64), and of sigmoid(|x|), sigmoid(-|x|) as it computes them. About 30 s; needs a C compiler.

    python benchmarks/exp_log1p_exhaustive.py

Last run (2026-11-29, GCC 12, AMD EPYC): log1p(e^-|x|) 4.47e-08 at |x| = 85.95; sigmoid 2.75e-07 at |x| = 4.13.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

CSRC = Path(__file__).resolve().parents[1] / "src" / "softmargin" / "kernels" / "csrc"

CHECK = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "scalar_math.h"
int main(void) {
    double worst_l = 0, worst_g = 0; float wl = 0, wg = 0;
    for (uint32_t bits = 0; bits < 0x42ac0000u; bits++) { /* every float in [0, 86) */
        float a; memcpy(&a, &bits, 4);
        float zlo, z = smf_exp_neg(a, &zlo);
        float u = 1.0f + z, v = 2.0f + z, q = 1.0f / (u * v); /* as the kernel's loop does */
        float lo, hi = smf_log1p(z, zlo, z * u * q, u * q, &lo);
        double ze = exp(-(double)a), le = log1p(ze);
        double e = fabs(((double)hi + (double)lo) - le) / le;
        if (e > worst_l) { worst_l = e; wl = a; }
        float r = q * v, zr = z * r;
        double e2 = fabs(zr - ze / (1 + ze)) / (ze / (1 + ze)), e3 = fabs(r - 1 / (1 + ze)) * (1 + ze);
        if (e3 > e2) e2 = e3;
        if (e2 > worst_g) { worst_g = e2; wg = a; }
    }
    printf("every float32 |x| in [0, 86): log1p(e^-|x|) %.3g at |x| = %.9g; sigmoid(+-|x|) %.3g at |x| = %.9g\n",
           worst_l, wl, worst_g, wg);
    return 0;
}
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "check.c", Path(tmp) / "check"
        src.write_text(CHECK)
        subprocess.run(["cc", "-O2", "-march=native", f"-I{CSRC}", str(src), "-o", str(exe), "-lm"], check=True)
        return subprocess.run([str(exe)]).returncode


if __name__ == "__main__":
    sys.exit(main())
