"""The harness: scenarios, grids of cells, executors, records, tables and figures."""
