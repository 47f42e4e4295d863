"""Speaking OpenAI's API: its request bodies mapped to Switchyard jobs (``bodies``), batch input
files validated line by line (``batch_input``), and finished jobs written back as OpenAI's
completion objects and batch output lines (``answers``). Pure code: no storage, no HTTP."""
