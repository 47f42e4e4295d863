"""Learning from outcomes: fit the predictor on labelled history (and imported outcome data),
keep versions of it, adapt it to the live fleet, and explore models it has seen too little of."""
