"""python profile.py [--help]: where the time of a training step goes. The work is in ablation.py.

This file's name is the one users type, but it is also the name of a standard-library module
(`cProfile` imports `profile`, and torch imports cProfile). Any script run from this folder would
import this file in its place, so when imported rather than run, it loads the standard library's
`profile` into itself and stays out of the way.
"""
if __name__ == '__main__':
    import ablation
    ablation.main()
else:
    import importlib.util as _util
    import os as _os
    import sysconfig as _sysconfig

    _spec = _util.spec_from_file_location(__name__, _os.path.join(_sysconfig.get_path('stdlib'), 'profile.py'))
    _stdlib_profile = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_stdlib_profile)
    globals().update({k: v for k, v in vars(_stdlib_profile).items() if not k.startswith('__')})
