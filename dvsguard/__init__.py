"""dvsguard: event-camera recordings to adversarially robust spiking networks for Loihi.

Stages (one sub-package each, data flows one way):
``data`` (readers, framing, HDF5 cache) → ``snn`` (IF neurons, surrogates, spiking VGG)
→ ``train`` (losses, defenses, trainer) / ``attack`` (FGSM, PGD, APGD, ensembles)
→ ``export`` (lava-dl netx, integer simulator, Lava check) → ``analyze`` (figures, report).
"""

__version__ = "0.1.0"
