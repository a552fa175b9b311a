"""Operations: configuration, the error hierarchy, logs and metrics. Imports nothing of chatapp."""
