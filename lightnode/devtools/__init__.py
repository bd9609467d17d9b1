"""Developer workflow (SPEC §7.1): `lightnode dev` (serve a source dir, reload and
replay on change) and `lightnode test` (play the test queries once, for CI).

session.py runs the real node on a throwaway data dir; expect.py matches and
diffs `expect`; report.py renders tables and the JSON report; server.py and
runner.py are the two commands; cli.py their arguments.
"""
