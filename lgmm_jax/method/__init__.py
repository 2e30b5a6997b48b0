"""The method's mathematics (Sections 2-3, Appendix G), as pure functions: no task, no data, no loop."""
