"""The copy path of generation: the seed's notes voted back in (`copying`), by the bar they
repeat (`lookback`) and by the run they continue (`repeats`). Its lambdas are fitted in
engine.model.train.copy_fit."""
