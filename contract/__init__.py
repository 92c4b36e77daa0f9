"""What the service, the workers and the client agree on, in pure Python (pydantic, no torch,
numpy or Ray at import): the job spec (``spec``), job states (``states``), the worker-report
protocol (``protocol``), cluster capacity (``capacity``), datasets' metadata (``datasets``),
model choice (``model_choice``), the model file's recipe (``recipe``), a study's arms
(``arms``), the REST API's bodies (``api``; a team's users, tokens, quotas and audit log:
``team``) and where everything lives under ``$SYNCBN_HOME`` (``layout``)."""
