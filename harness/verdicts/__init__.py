"""Verdicts on the harness and on models: does parity catch what it must, and never flag what it must not?

- faults.py: `Fault`, `FAULTS`, `register`, `faults_for` and the generic helpers families write faults with
  (the catalog lives with each family: references/<family>/faults.py);
- fault_matrix.py: `run_fault_matrix`, `format_fault_matrix` (`diffparity faults`), each failing run drilled
  down to a module (harness/drill/) and checked against the fault's `expected_module`;
- campaign.py: the false-alarm campaign (`python -m harness.verdicts.campaign`);
- grid.py: seeds x sizes x dtypes of a correct pipeline (`python -m harness.verdicts.grid`);
- gate.py: the model-addition gate (`diffparity gate`).
"""
