"""Joint prevention and control (联防联控): incidents correlated from alerts across devices, departments, regions.

Roles (CONVENTIONS.md rule 1): ``models`` (pure data and ORM rows), ``patterns`` (the declared correlation patterns
and the routing table), ``kinds/`` (one module per pattern kind behind one protocol), ``correlator`` and ``tasks``
(pure logic taking ``now``), ``store`` (the SQL adapter) and ``service`` (the orchestration).
"""
