"""The built-in demos: ``fastpipe demo hazard`` (the owner hazard, side by side) and ``fastpipe demo proxy``
(the proxy in front of the built-in origin under concurrent clients). Not imported by ``import fastpipe``."""
