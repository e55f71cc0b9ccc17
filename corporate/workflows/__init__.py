"""The four corporate sagas, one module each: steps in order, each action next to its compensation."""
