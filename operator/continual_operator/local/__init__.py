"""Local mode: the operator's planner on one machine (:mod:`.mode`), with processes instead of Jobs
(:mod:`.executor`); the folder inbox (:mod:`.folder_inbox`), the state folder (:mod:`.state`) and the status
page's source (:mod:`.page`). Users' documentation: docs/local.md."""
