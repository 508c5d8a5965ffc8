"""cuse-lguest: /dev/lguest served from userspace (CUSE + Unicorn)."""
from setuptools import find_packages, setup

setup(
    name="cuse-lguest",
    version="0.1.0",
    description="The 3.x lguest host (/dev/lguest) in Python: CUSE through libfuse3, Guests on Unicorn",
    packages=find_packages(include=["cuse_lguest", "cuse_lguest.*"]),
    package_data={"cuse_lguest.udev": ["*.rules"], "cuse_lguest.systemd": ["*.service"]},
    python_requires=">=3.11",
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15", "unicorn==2.1.4", "psutil>=5.9", "pyelftools>=0.29"],
    extras_require={"test": ["pytest>=7", "hypothesis>=6"]},
    # Native pieces built with cffi; each module's builder lives beside it.
    cffi_modules=[
        "cuse_lguest/cpu/_native_build.py:ffibuilder",
        "cuse_lguest/cpu/_exits_build.py:ffibuilder",
        "cuse_lguest/cuse/_build.py:ffibuilder",
    ],
    entry_points={"console_scripts": ["cuse-lguest=cuse_lguest.cli:main"]},
)
