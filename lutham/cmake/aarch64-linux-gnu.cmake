# CMake toolchain file: cross-compile lutham/ for aarch64 Linux with Debian's
# g++-aarch64-linux-gnu, against the executorch aarch64 wheel's runtime (.ci/setup_aarch64):
#
#   ET=~/.cache/sharekan/aarch64/executorch-1.5.1/executorch
#   cmake -S lutham -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=lutham/cmake/aarch64-linux-gnu.cmake \
#       -DCMAKE_PREFIX_PATH=$ET/lib/cmake
#   cmake --build build/aarch64
#   qemu-aarch64 -L /usr/aarch64-linux-gnu build/aarch64/lutham_runner model.pte in.txt
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
# programs run on the build machine; libraries, headers and packages come from the target:
# the sysroot or a path given in CMAKE_PREFIX_PATH (the executorch aarch64 wheel)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# under qemu-user for try_run and tests
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
