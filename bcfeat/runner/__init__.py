"""Running the study and the tools: the stage runner (papermill), the profiles, the ``bcfeat``
command line and its exit codes."""
