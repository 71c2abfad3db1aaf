"""Recipes across the whole system (data engine, policy and model together), such as `reproduce`.

The top floor beside `cli.py`: a recipe may import every package; only `cli.py` imports a recipe.
"""
