"""What every proof script shares: each symbolic step is verified, or the script stops with exit
code 1 naming the step.  (Not a proof itself; tests/test_proofs.py runs only C*.py.)"""

import sys

import sympy as sp


def verified(step: str, condition: bool) -> None:
    """Print the verified step, or print it as FAILED and exit 1."""
    if not condition:
        print(f"FAILED: {step}")
        sys.exit(1)
    print(f"verified: {step}")


def is_zero(expr) -> bool:
    """expr simplifies to 0."""
    return sp.simplify(expr) == 0
