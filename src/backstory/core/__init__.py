"""The bottom layer: errors users see, files written whole, and locks on shared artifacts.

Standard library only; every other layer may import it.
"""
