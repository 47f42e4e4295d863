"""Learning from outcomes: fit the predictor on labelled history (and imported outcome data),
keep versions of it, and adapt it to the live fleet with an exploration bonus."""
