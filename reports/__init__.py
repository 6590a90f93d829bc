"""Reports (评估反馈): vehicles, energy, data coverage and region scorecards built from the stores.

Each report kind is a pure builder over data read through `reports.model.ReportSource`; renderers (JSON, CSV,
printable zh-CN HTML, PDF) and delivery (CLI, API, schedule) sit at the edges.
"""
