"""`python -m build_engine`: the whole pipeline (see build_engine/build.py)."""
from build_engine.build import main

main()
