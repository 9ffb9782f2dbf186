"""Commands the package ships on top of the library: the toy world's quality bench and the demo.

`quality` (`loraedit bench quality`) scores every mode against toy-world ground truth and `demo`
(`loraedit demo`, `make demo`) runs the whole method on one toy-world clip. Both drive the library's own
pieces, so what they measure is what `loraedit edit` runs, but the library never imports them: only `cli`
does (tests/test_architecture.py), so they can change, or leave the package, without touching the core.
"""
