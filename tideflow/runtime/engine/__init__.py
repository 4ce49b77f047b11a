"""The in-process engine: `Engine.step()` = schedule -> execute -> update, returning an
`EngineOutput`; `EngineDriver` (driver.py) is the one step loop every caller uses; `EngineAPI`
(api.py) is what code outside this package may touch; `PromptProcessor` is the prompt front door."""
