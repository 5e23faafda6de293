"""One C library (native/): the quantization arithmetic every C path runs - round half to even,
activation quantize, exp, erf / GELU, pairwise sums, bit-plane packing - is defined once, in
native/qv_arith.h, and the model.so micro-kernels (native/model/) and the runtime's kernels
(native/*.c, ref/, x86/, arm/) only call it. The values themselves are checked elsewhere (model.so
against the numpy reference, every SIMD path against the portable one); this guards the structure:
a second definition is how two paths drift apart."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
ARITH = NATIVE / "qv_arith.h"

# Definitions of the arithmetic's routines (a name followed by its parameter list and a body).
ROUTINES = (r"round_even\w*", r"exp_\w+", r"nq_exp", r"erf\w*", r"gelu_[a-z]+", r"code_of\w*",
            r"quantize_row", r"nq_code\w*", r"pairwise_sum", r"layernorm_row", r"plane_word\w*",
            r"nq_plane_word", r"pack_row\w*", r"plane_sum")
DEFINITION = re.compile(r"^[A-Za-z_][\w \*()\",=-]*?\b(" + "|".join(ROUTINES) + r")\s*\([^;{]*\)\s*\{", re.M)
# The ways the routines are written inline: rounding instructions and magic numbers, the
# polynomial constants of exp and erf, the bit gather and byte-test packing, libm calls.
INLINE = re.compile(r"12582912|nearbyint|\brintf?\s*\(|roundscale|_mm(256|512)?_round_ps|vrndn|vrndm|"
                    r"1\.9875691500e-4|2\.72614225801306e-10|0\.3275911|0x0102040810204080|"
                    r"_mm512_test_epi8_mask|movemask_epi8|\bexpf\s*\(|\berff\s*\(")


def code(path: Path) -> str:
    """The file without its comments (they may name the arithmetic)."""
    text = re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def c_sources() -> list[Path]:
    """Every C file of the library a model.so or the runtime compiles (not its tests and tools)."""
    skip = {"tests", "tools"}
    return sorted(p for p in NATIVE.rglob("*.[ch]") if not skip & set(p.relative_to(NATIVE).parts))


def test_compile_has_no_c_tree_of_its_own():
    assert not list((ROOT / "compile").rglob("*.[ch]")), "C sources belong in native/"
    from qvit_compile import package
    assert all(Path(s).resolve().parent == (NATIVE / "model").resolve() for s in package.MODEL_KERNELS)


def test_every_arithmetic_routine_is_defined_only_in_qv_arith_h():
    defined = {m.group(1) for m in DEFINITION.finditer(code(ARITH))}
    for name in ("round_even", "round_even_v", "code_of", "code_of_v", "quantize_row", "exp_f", "exp_v",
                 "nq_exp", "erf_f", "erf_v", "gelu_f", "gelu_v", "pairwise_sum", "layernorm_row",
                 "plane_word", "plane_word_portable", "pack_row", "pack_row_k", "plane_sum"):
        assert name in defined, f"qv_arith.h no longer defines {name} (or this test's pattern misses it)"
    for src in c_sources():
        if src == ARITH:
            continue
        text = code(src)
        again = sorted({m.group(1) for m in DEFINITION.finditer(text)})
        assert not again, f"{src.relative_to(ROOT)} defines {again} again: use native/qv_arith.h's"
        inline = sorted({m.group(0) for m in INLINE.finditer(text)})
        assert not inline, f"{src.relative_to(ROOT)} writes the arithmetic inline ({inline}): use qv_arith.h"


def test_the_checks_would_see_a_second_definition():
    """The patterns match what they guard against (so the test above can fail)."""
    assert DEFINITION.search("static inline float exp_neg(float x) {\n")
    assert DEFINITION.search("QV_AI vf round_even_v(vf x) {\n")
    assert DEFINITION.search("static void quantize_row(const float *x, int n,\n    float s) {\n")
    assert not DEFINITION.search("  quantize_row(x, n, step, zp, bits, codes);\n")
    assert INLINE.search("float q = nearbyintf(y / step);")
    assert INLINE.search("__m512 q = _mm512_roundscale_ps(y, 8);")
    assert INLINE.search("word |= (v * 0x0102040810204080ULL) >> 56;")
