"""Sample endpoint of the `demo` service: a travel-insurance quote.

lightnode imports this module once per pipeline (its initialization code) and
then calls `my_api_function` for every request, with the JSON body's attributes
as keyword arguments:

    curl -X POST http://127.0.0.1:12000/public/api/v1/demo/quote/run \\
         -d '{"age": 35, "days": 344, "price": 600}'

Standard library only, so it runs in any Python environment.
"""

from __future__ import annotations

import math

BASE_RATE = 0.05  # share of the trip price charged before any factor
AGE_THRESHOLD = 30  # years; no age surcharge up to this age
AGE_STEP = 0.02  # surcharge per year above AGE_THRESHOLD
DAYS_PER_YEAR = 365


def _number(name: str, value: object) -> float:
    """`value` as a finite, non-negative float; JSON ints and numeric strings are accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def my_api_function(age: float, days: float, price: float) -> dict[str, float]:
    """Quote the insurance of a trip.

    Formula (every step deterministic):
        base        = price * 0.05
        age_factor  = 1 + 0.02 * max(0, age - 30)        rounded to 4 decimals
        days_factor = 1 + days / 365                      rounded to 4 decimals
        quote       = base * age_factor * days_factor     rounded to 2 decimals

    Args:
        age: the traveller's age in years.
        days: the trip's length in days.
        price: the trip's price.

    Returns:
        {"quote": float, "base": float, "age_factor": float, "days_factor": float}

    Raises:
        ValueError: an argument is not a number >= 0 (the caller gets a FunctionError).
    """
    age_years = _number("age", age)
    days_count = _number("days", days)
    price_value = _number("price", price)
    base = round(price_value * BASE_RATE, 2)
    age_factor = round(1 + AGE_STEP * max(0.0, age_years - AGE_THRESHOLD), 4)
    days_factor = round(1 + days_count / DAYS_PER_YEAR, 4)
    return {
        "quote": round(base * age_factor * days_factor, 2),
        "base": base,
        "age_factor": age_factor,
        "days_factor": days_factor,
    }
