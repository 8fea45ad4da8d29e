"""Docments: every parameter of every public function of liver_pcr has its own comment, beside it.

fastcore's `docments` reads the comment on a parameter's line as that parameter's documentation. A comment
that lists several parameters (`# output folder; training preset; cohort size`), or a parameter left
without one while its neighbours have theirs, documents the wrong parameter: this test fails on both.
"""
import importlib, inspect, pkgutil

import pytest
from fastcore.docments import docments

import liver_pcr

SKIP = {'self', 'cls'}


def _public_functions():
    "(qualified name, function) for every public function and method defined in liver_pcr."
    for m in pkgutil.walk_packages(liver_pcr.__path__, 'liver_pcr.'):
        if m.name.endswith('_modidx'):
            continue
        mod = importlib.import_module(m.name)
        for name, obj in vars(mod).items():
            if name.startswith('_') or getattr(obj, '__module__', None) != mod.__name__:
                continue
            if inspect.isfunction(obj):
                yield f'{mod.__name__}.{name}', obj
            elif inspect.isclass(obj):
                for k, f in vars(obj).items():
                    f = f.__func__ if isinstance(f, (staticmethod, classmethod)) else f
                    if inspect.isfunction(f) and (not k.startswith('_') or k == '__init__'):
                        yield f'{mod.__name__}.{name}.{k}', f


def problems(f) -> list[str]:
    "What is wrong with `f`'s docments: a comment for several parameters, or a parameter without one."
    try:
        docs = docments(f, full=False)
    except Exception:  # no source (a builtin, a C function)
        return []
    docs.pop('return', None)
    params = [p for p in inspect.signature(f).parameters.values()
              if p.name not in SKIP and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    have = {p.name for p in params if docs.get(p.name)}
    out = [f'{p.name!r} documents several parameters: {docs[p.name]!r}' for p in params
           if docs.get(p.name) and ';' in docs[p.name]]
    if have and len(have) < len(params):  # some are documented, so all should be
        out += [f'{p.name!r} has no comment' for p in params if p.name not in have]
    return out


FUNCS = list(_public_functions())


def test_walks_the_package():
    assert len(FUNCS) > 300


@pytest.mark.parametrize('name,f', FUNCS, ids=[n for n, _ in FUNCS])
def test_docments(name, f):
    assert not problems(f), f'{name}: ' + '; '.join(problems(f))


def test_catches_a_comment_for_several_parameters():
    def run_demo(
        out=None,
        preset_name='fast',
        seed: int = 0,  # output folder; training preset; cohort size
    ):
        return out, preset_name, seed
    assert len(problems(run_demo)) == 3


def test_accepts_one_comment_each():
    def f(
        a,  # the first
        b=1,  # the second
        *args,
        **kw,
    ):
        return a, b
    assert problems(f) == []
