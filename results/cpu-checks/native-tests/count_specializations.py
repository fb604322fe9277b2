"""pytest plugin: counts the distinct Triton specialisations that tests/test_kernels.py launches
(constexprs, dtypes, 16-byte alignment, ints equal to 1 or divisible by 16, as Triton specialises),
under the interpreter, to estimate the compiling the tests stage does natively. One process only
(no -n): it prints its count at exit. Usage in native-tests.log."""
import atexit, torch
import kernels.selection as S, kernels.cross_entropy as C
KEYS = set()
class Rec:
    def __init__(self, fn, name): self.fn, self.name = fn, name
    def __getitem__(self, grid):
        launch = self.fn[grid]
        def run(*args, **kw):
            key = [self.name]
            for a in args:
                if isinstance(a, torch.Tensor): key.append((str(a.dtype), a.data_ptr() % 16 == 0))
                elif isinstance(a, bool): key.append(a)
                elif isinstance(a, int): key.append('1' if a == 1 else '16' if a % 16 == 0 else 'i')
                else: key.append(type(a).__name__)
            key.append(tuple(sorted(kw.items())))
            KEYS.add(tuple(key))
            return launch(*args, **kw)
        return run
S._select_kernel = Rec(S._select_kernel, 'select')
C._ce_forward_kernel = Rec(C._ce_forward_kernel, 'fwd')
C._ce_backward_kernel = Rec(C._ce_backward_kernel, 'bwd')
def report():
    from collections import Counter
    print('\nSPECIALIZATIONS', len(KEYS), Counter(k[0] for k in KEYS))
    big = Counter(dict(k[-1]).get('BLOCK') for k in KEYS if k[0] == 'select')
    print('select blocks', sorted(big.items(), key=lambda kv: (kv[0] is None, kv[0])))
atexit.register(report)
