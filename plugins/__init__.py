"""userplane's built-in plugins: written exactly as a third party would write one."""
