"""The trace: what one pipeline run recorded, stage by stage, and the file it is saved as.

- keys.py: `RecordKey` (stage, field, step), `STAGES`, the pipeline order of records, storable dtypes, `TraceError`;
- memory.py: `Trace`, records held in memory (`save`, `load`);
- streaming.py: `TraceWriter` (records streamed to a spool), `TraceReader` (a file read lazily), `open_trace`;
- file_format.py: the safetensors file with its checked header (`read_trace_header`, `read_record`).
"""
