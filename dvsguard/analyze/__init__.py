"""Measurements behind the paper's figures for any trained model, and the run report.

``gradients`` (g = ∇ₓ f_y and its norms), ``vulnerability`` (ρ_rand, ρ_adv, the finite
difference of Proposition 4.4), ``figures`` (matplotlib, imported lazily), ``analysis``
(the ``analyze`` command), ``report`` (the ``report`` command). Importing this package loads
nothing heavy; import the submodules.
"""
