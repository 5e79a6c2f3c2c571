"""A study's report: the users' success criteria, learning curves, figures and one HTML page.

:mod:`.build` writes it (and attaches it to the study for the dashboard); :mod:`.criteria`
judges the criteria, :mod:`.curves` reads each trial's learning curve, :mod:`.plots` draws and
:mod:`.page` writes the self-contained page.
"""
